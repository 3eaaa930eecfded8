"""The page's layout: its texts, components and element ids, and which handler each event calls.

``build_page`` lays the page out over the page's handlers (falco.ui.handlers): the banner, the Photo
tab, the Video tab (falco.ui.video_tab), the API endpoint's hidden inputs (falco.ui.api) and the
licences.  ``PAGE_CSS`` goes with it to ``launch`` (falco.ui.page).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from falco.ui.api import ApiEndpoint
from falco.ui.handlers import Components, PageHandlers
from falco.ui.render import METRIC_HEADERS
from falco.ui.sessions import Session, end_session
from falco.weights.licences import licence_footer

EXAMPLES = (Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg",)
INTRO = """# FALCO: face anonymization that keeps the attributes
Every face in your photo is replaced by a **different person** with the same pose, expression,
lighting and age (Barattin et al., CVPR 2023).

1. Upload a photo, take one with the webcam, or pick the example.  Every face found gets a number.
2. Tick the faces to anonymize (all by default) and set **m**: at 0 the new face is as unlike the
   original as the face recogniser can tell; higher values keep more of the identity.
3. **Run** streams the optimisation as it goes; **Compare m** runs several values of m at once.

The **Video** tab does the same for a clip: each person gets one new identity, kept in every frame.
"""
# Gradio's file list offers to remove each file of a list, downloads included; gallery captions are cut to one line.
PAGE_CSS = """#falco-downloads .label-clear-button, #falco-video-downloads .label-clear-button { display: none; }
#falco-gallery .caption-label { white-space: normal; max-width: 92%; }
.falco-dot { display: inline-block; width: 0.75em; height: 0.75em; border-radius: 50%; vertical-align: -0.05em; }
.falco-ready { background: #2ecc40; } .falco-loading { background: #f0ad4e; } .falco-failed { background: #e74c3c; }"""


def photo_input(**kwargs: Any) -> gr.Image:
    """A gr.Image (filepath) that hands the uploaded file to falco's loader unopened.

    gr.Image opens every upload with PIL, so a file that is not an image, or a huge one,
    would fail there with a message for developers; falco.faces.load_photo says instead
    what is wrong in the visitor's words.  (A subclass would do the same, but Gradio
    writes a .pyi stub next to the module of every Component subclass.)
    """
    image = gr.Image(type="filepath", **kwargs)
    standard = image.preprocess

    def keep_file(payload):
        if payload is None or (payload.url or "").startswith("data:"):
            return standard(payload)
        return payload.path

    image.preprocess = keep_file
    return image


def build_page(app: PageHandlers) -> gr.Blocks:
    """The page over ``app``'s handlers, with its queue; ``app`` learns its components and the page."""
    cfg, optim = app.config, app.default_optim
    with gr.Blocks(title="FALCO face anonymization", delete_cache=cfg.cache_sweep_s,
                   analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        banner = gr.Markdown(app.status_text(), elem_id="falco-status")
        session = gr.State(Session(), delete_callback=end_session)
        with gr.Tabs():
            with gr.Tab("Photo", elem_id="falco-photo-tab"):
                with gr.Row():
                    with gr.Column(scale=2):
                        photo = photo_input(label="Photo", sources=["upload", "webcam", "clipboard"],
                                            elem_id="falco-photo")
                        gr.Examples([[str(p)] for p in EXAMPLES if p.exists()], inputs=[photo], label="Example")
                        faces_view = gr.Image(label="Faces found", interactive=False, elem_id="falco-faces")
                        faces_text = gr.Markdown(elem_id="falco-faces-text")
                        picked = gr.CheckboxGroup(label="Faces to anonymize", choices=[], value=[], type="value",
                                                  elem_id="falco-picked")
                        picked_for = gr.Textbox(visible=False)
                        margin = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Identity margin m",
                                           info="0: as unlike the original as possible; 1: keeps the identity",
                                           elem_id="falco-margin")
                        with gr.Row():
                            run_btn = gr.Button("Run", variant="primary", elem_id="falco-run")
                            compare_btn = gr.Button("Compare m", elem_id="falco-compare")
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="falco-stop")
                        with gr.Accordion("Advanced", open=False):
                            margins_text = gr.Textbox(", ".join(f"{m:g}" for m in cfg.compare_margins),
                                                      label="m values for Compare m")
                            steps = gr.Slider(1, cfg.max_steps, value=optim.steps, step=1, label="Steps",
                                              elem_id="falco-steps")
                            lr = gr.Number(optim.lr, label="Learning rate", minimum=0)
                            lambda_id = gr.Number(optim.lambda_id, label="lambda_id (identity)", minimum=0)
                            lambda_attr = gr.Number(optim.lambda_attr, label="lambda_attr (attributes)", minimum=0)
                            seed = gr.Number(optim.seed, label="Seed", precision=0)
                            another_fake = gr.Checkbox(False, label="Another fake",
                                                       info=f"draw the fake among the {cfg.another_fake_k} nearest "
                                                            "(change the seed for yet another)")
                    with gr.Column(scale=3):
                        progress = gr.HTML(elem_id="falco-progress-box")
                        live = gr.Image(label="Optimisation (live)", interactive=False, elem_id="falco-live")
                        result_photo = gr.Image(label="Anonymized photo", interactive=False, format="png",
                                                elem_id="falco-result")
                        gallery = gr.Gallery(label="Results", columns=4, format="png", elem_id="falco-gallery")
                        metrics = gr.Dataframe(headers=METRIC_HEADERS, label="Identity", interactive=False,
                                               elem_id="falco-metrics")
                        plot = gr.Plot(label="Identity against m", visible=False, elem_id="falco-plot")
                        shown_view = gr.Radio(label="Before | after", choices=[], visible=False,
                                              elem_id="falco-shown")
                        before_after = gr.ImageSlider(label="Original | anonymized", type="filepath",
                                                      interactive=False, elem_id="falco-before-after")
                        downloads = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                            elem_id="falco-downloads")
            app.video_tab.build()
        ApiEndpoint(app).build()   # the named API endpoint's own inputs and outputs, hidden
        gr.Markdown(licence_footer(), elem_id="falco-licences")
        c = app.components = Components(photo, picked_for, picked, margin, margins_text, steps, lr, lambda_id,
                                         lambda_attr, seed, another_fake, session, progress, live, result_photo,
                                         gallery, metrics, plot, downloads, faces_view, faces_text, before_after,
                                         shown_view, gr.Timer(1.0, active=False))

        timer = gr.Timer(1.0, active=app.loader.status()[0] == "loading")
        timer.tick(app.status_update, outputs=[banner, timer], queue=False, api_visibility="private")
        demo.load(app.status_update, outputs=[banner, timer], queue=False, api_visibility="private")
        # Unprocessed inputs: Gradio's own checks of the form (the picker's choices, the numbers' bounds) raise
        # its messages with a server traceback, and a pick made before the new photo's faces were numbered
        # fails the picker's check; PageHandlers._page_settings checks every value and says what is wrong.
        runs = []
        for button, handler in ((run_btn, app.run), (compare_btn, app.compare)):
            # Every click reaches request_run (Gradio's default drops clicks while the last one's chain runs),
            # which refuses one while a run is going; .success: a refused click starts nothing.  Queued, but in
            # a line of its own that never waits: only a queued event's error reaches the visitor as a toast.
            requested = button.click(app.request_run, inputs=[session], outputs=[c.waiting],
                                     concurrency_id="clicks", concurrency_limit=None, show_progress="hidden",
                                     api_visibility="private", trigger_mode="multiple")
            runs.append(requested.success(handler, inputs=c.form, outputs=c.results, show_progress_on=[live],
                                       concurrency_id="gpu", api_visibility="private", preprocess=False))
        stop_btn.click(app.stop, inputs=[session], queue=False, api_visibility="private")
        c.waiting.tick(app.show_waiting, inputs=[session], outputs=[progress, c.waiting], queue=False,
                       show_progress="hidden", api_visibility="private")
        margin.change(app.show_margin, inputs=[margin, shown_view, session],
                      outputs=[result_photo, gallery, metrics, before_after], queue=False, show_progress="hidden",
                      api_visibility="private")
        shown_view.change(app.show_before_after, inputs=[shown_view, margin, session], outputs=[before_after],
                          queue=False, show_progress="hidden", api_visibility="private")
        # A new photo ends a run on the previous one and clears its results.
        photo.change(app.on_photo, inputs=[photo, session], cancels=runs,
                     outputs=[*c.results, faces_view, picked, faces_text, picked_for],
                     concurrency_id="detect", concurrency_limit=2, api_visibility="private")
    demo.queue(max_size=cfg.queue_max_size, default_concurrency_limit=1)
    app.demo = demo
    return demo
