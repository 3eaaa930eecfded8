"""A shared Space: from a clone to a running Space, and a check that a deployed one works.

    folder    exactly the files a Space needs, and the README's front matter for it
    deploy    the Space created, uploaded and configured through huggingface_hub (or a dry run's folder)
    check     a deployed Space (or any URL of the app) tried as a visitor would, with timings
    __main__  the command line: python -m falco.space deploy | check
"""
