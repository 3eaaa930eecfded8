"""The web app: a Gradio page over the pipeline, and its API endpoint.

    startup    what ``python app.py`` does, in order: device, weights, page, networks
    engine     the device; the pipeline, built once per process in the background; what a failed load means
    grower     a prepared set's fake bank grown in the background while no run goes
    page       the page put together over the engine (``build_app``) and served (``launch_app``)
    layout     the page's texts, components, element ids, and which handler each event calls
    handlers   the banner's and the Photo tab's handlers, and the GPU line for photos
    api        the named API endpoint /anonymize: its inputs, outputs and handler
    uploads    which files of Gradio's cache a handler may take from a caller or delete
    video_tab  the Video tab: its layout and handlers, over what it needs of the page
    form       the form's values (page or API) turned into run settings
    sessions   per-visitor state and files, and uploads shared by sessions
    render     pictures and text for the page
    downloads  a run's files for the visitor
    messages   what a visitor is told when something fails
    queue_state  what Gradio's queue holds, read for the page: a place in line, the calls using a file
"""
