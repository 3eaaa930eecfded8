"""The web app: a Gradio page over the pipeline, and its API endpoint.

    startup    what ``python app.py`` does, in order: device, weights, page, networks
    engine     the pipeline, built once per process in the background; what a failed load means
    page       the layout, the handlers and the named API endpoint
    form       the form's values (page or API) turned into run settings
    sessions   per-visitor state and files, and uploads shared by sessions
    render     pictures and text for the page
    downloads  a run's files for the visitor
    messages   what a visitor is told when something fails
"""
