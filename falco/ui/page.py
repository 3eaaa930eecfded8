"""The page: its layout, its handlers and the named API endpoint.

``build_app`` makes the page over an EngineLoader (falco.ui.engine); ``launch_app`` serves it
with the app's limits; falco.ui.startup orders both for ``python app.py``.  Tests build exactly
the same page in-process.

A run is a generator that streams the optimisation; Gradio's queue runs one job at a time and
tells a waiting visitor their place.  Run, Compare m and the API read their values as one
RunForm and turn them into settings the same way (falco.ui.form).  Stop asks the visitor's run
to stop; the run itself then says "Stopped after step k" as its last update, so no step update
already on its way can land after it.
"""

from __future__ import annotations

import html
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from gradio.data_classes import ImageData
from PIL import Image
from pydantic import ValidationError, model_validator

from falco.checks import check_face_picks
from falco.config import AppConfig, OptimConfig, VideoConfig
from falco.device import app_device, zerogpu_available
from falco.errors import FalcoError
from falco.faces.detect import NO_FACE_MESSAGE
from falco.results import AnonymizationResult, StepEvent
from falco.ui.downloads import run_record, write_downloads
from falco.ui.engine import EngineLoader, pipeline_factory
from falco.ui.form import RunForm, RunSettings, parse_faces, settings_from_form
from falco.ui.messages import PHOTO_NOT_UPLOADED, RUN_GOING, STOPPED_EARLY, STOPPED_WAITING, describe_error
from falco.ui.queue_state import RunClock, api_calls_with, has_events, place_in_line
from falco.ui.render import (
    METRIC_HEADERS,
    PHOTO_VIEW,
    Comparison,
    annotate_faces,
    face_gallery,
    face_summary,
    margin_plot,
    metric_rows,
    preview_grid,
    progress_box,
    progress_html,
    warning,
)
from falco.ui.sessions import UPLOADS, Session, end_session, read_photo
from falco.ui.video_tab import add_video_tab
from falco.weights import fetch_weights
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


def as_gr_error(err: BaseException) -> gr.Error:
    """``err`` as the gr.Error a handler raises: one line for the visitor (describe_error logs what is worth it)."""
    return gr.Error(describe_error(err), print_exception=False)


def _inode(path: str) -> int | None:
    try:
        return Path(path).stat().st_ino
    except OSError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def zerogpu_decorator(duration_s: int) -> Callable | None:
    """``spaces.GPU(duration=...)`` on a ZeroGPU Space; None elsewhere."""
    if not zerogpu_available():
        return None
    import spaces
    return spaces.GPU(duration=duration_s)


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


class AnyPhotoRecord(ImageData):
    """Gradio's image file record, validated as ever, except that a value that is not one ("abc", 5) passes as an
    empty record instead of failing with pydantic's message: api_anonymize then answers it in the page's words."""

    @model_validator(mode="wrap")
    @classmethod
    def _anything(cls, value: Any, validate: Any) -> Any:
        try:
            return validate(value)
        except ValidationError:
            return cls.model_construct(path=None)


def api_photo_input() -> gr.Image:
    """The API's photo input, left to api_anonymize to check: whatever a caller sends reaches it as sent.

    Gradio checks and copies an input's files before any handler runs, refusing a path outside its cache in words
    that name server paths; with a proxy URL (the attribute of apps loaded from other apps) it leaves the file record
    as sent, and the proxy serves nothing (Gradio's /proxy route serves only the hosts of the apps it loaded).  Its
    check of the record's shape is made lenient (AnyPhotoRecord); the schema clients read stays Gradio's.
    """
    photo = gr.Image(type="filepath", label="photo")
    photo.proxy_url = "http://unprocessed.invalid"
    photo.data_model = AnyPhotoRecord
    return photo


@dataclass(frozen=True)
class Components:
    """The page's components that handlers read or write."""
    photo: gr.Image
    picked_for: gr.Textbox            # the photo whose faces the picker shows
    picked: gr.CheckboxGroup
    margin: gr.Slider
    margins_text: gr.Textbox          # the m values of Compare m
    steps: gr.Slider
    lr: gr.Number
    lambda_id: gr.Number
    lambda_attr: gr.Number
    seed: gr.Number
    another_fake: gr.Checkbox
    session: gr.State
    progress: gr.HTML
    live: gr.Image
    result_photo: gr.Image
    gallery: gr.Gallery
    metrics: gr.Dataframe
    plot: gr.Plot
    downloads: gr.File
    faces_view: gr.Image
    faces_text: gr.Markdown
    before_after: gr.ImageSlider
    shown_view: gr.Radio              # what the before/after slider shows: the photo or a face
    waiting: gr.Timer                 # refreshes the progress box while the visitor's run waits in line

    @property
    def form(self) -> set:
        """What Run and Compare m read, handed to them as one dict."""
        return {self.photo, self.picked_for, self.picked, self.margin, self.margins_text, self.steps, self.lr,
                self.lambda_id, self.lambda_attr, self.seed, self.another_fake, self.session}

    @property
    def results(self) -> list:
        return [self.progress, self.live, self.result_photo, self.gallery, self.metrics, self.plot, self.downloads,
                self.before_after, self.shown_view, self.session]

    def cleared(self) -> dict:
        """The results of no run: shown while a new one starts, after a new photo and under an error."""
        return {self.result_photo: None, self.gallery: [], self.metrics: [], self.plot: None, self.downloads: None,
                self.before_after: None, self.shown_view: gr.Radio(choices=[], value=None, visible=False)}


class FalcoApp:
    """Handlers of the page and the API.  One instance per process."""

    def __init__(self, loader: EngineLoader, config: AppConfig = AppConfig(), on_gpu: bool = True,
                 gpu: Callable | None = None, video_gpu: Callable | None = None):
        self.loader, self.config, self.on_gpu, self.video_gpu = loader, config, on_gpu, video_gpu
        self.default_optim = OptimConfig() if on_gpu else config.cpu_optim
        self.cache = Path(gr.utils.get_upload_folder())   # Gradio's cache: files there are served as they are
        self.clock = RunClock()   # the pace of the photo run holding the GPU line, for the expected waits
        # On ZeroGPU only this part holds a GPU; loading, detection and files stay outside.
        self._device_run = gpu(self._anonymize) if gpu is not None else self._anonymize

    # The GPU work.  Arguments cross a process boundary on ZeroGPU, so: a photo and settings.
    def _anonymize(self, photo: Image.Image, settings: RunSettings) -> Iterator[StepEvent | AnonymizationResult]:
        engine = self.loader.get()
        yield from engine.anonymize(photo, faces=settings.faces, margins=settings.margins, optim=settings.optim,
                                    fake_k=self.config.another_fake_k if settings.another_fake else 1,
                                    detections=settings.detections)

    @staticmethod
    def _read(photo_path: str) -> Image.Image:
        try:
            return read_photo(photo_path)
        except Exception as err:
            raise as_gr_error(err) from err

    def _stream(self, photo: Image.Image, settings: RunSettings) -> Iterator[StepEvent | AnonymizationResult]:
        """StepEvents then the AnonymizationResult; every error becomes a gr.Error."""
        try:
            self.loader.get()   # wait for the networks here, not inside the GPU slot
            self.clock.start()
            for event in self._device_run(photo, settings):
                if isinstance(event, StepEvent):
                    self.clock.tick(event.step, event.total_steps)
                yield event
        except gr.Error:
            raise
        except Exception as err:
            raise as_gr_error(err) from err
        finally:
            self.clock.stop()

    # -- the banner --
    def status_text(self) -> str:
        state, line = self.loader.status()
        cpu = self.default_optim
        notice = "" if self.on_gpu else (
            f"\n\n**Running on CPU**: a run takes minutes, not seconds. Defaults are lowered to {cpu.steps} steps"
            f"{' with the losses at 256 px' if cpu.loss_on_skip256 else ''}; the paper uses {OptimConfig().steps}.")
        # A coloured dot drawn by CSS: emoji need a font that not every visitor's machine has.
        return f'<span class="falco-dot falco-{state}" title="{state}"></span> {line}{notice}'

    def status_update(self) -> tuple[str, gr.Timer]:
        """Refreshes the banner until the load has ended either way."""
        return self.status_text(), gr.Timer(active=self.loader.status()[0] == "loading")

    # -- a new photo --
    def on_photo(self, photo_path: str | None, session: Session) -> dict:
        """Detects the faces of a new photo (numbered outlines, the face picker, a summary) and clears
        the previous photo's results."""
        c = self.components
        session.photo, session.detections, session.shown = photo_path, None, None
        update = {c.progress: "", c.live: None, **c.cleared(), c.faces_view: None,
                  c.picked: gr.CheckboxGroup(choices=[], value=[]), c.picked_for: photo_path or "", c.session: session}
        if not photo_path:
            return update | {c.faces_text: ""}
        if self._deletable(photo_path):
            session.hold(photo_path)
        try:
            photo = read_photo(photo_path)
            faces = self.loader.get().detect(photo)
        except Exception as err:
            return update | {c.faces_text: warning(describe_error(err))}
        session.detections = faces
        folder = session.new_folder(self.cache, "photo")
        session.drop_others(folder)
        update[c.faces_view] = str(folder / "faces.webp")
        annotate_faces(photo, faces).save(update[c.faces_view])
        if not faces:
            return update | {c.faces_text: warning(NO_FACE_MESSAGE)}
        choices, ticked, text = face_summary(faces)
        return update | {c.picked: gr.CheckboxGroup(choices=choices, value=ticked), c.faces_text: text}

    # -- Run, Compare m, Stop --
    def _page_settings(self, data: dict, compare: bool) -> tuple[str, RunSettings]:
        """The photo and settings of a Run or Compare m click; a FalcoError naming the first bad value.  Runs
        take the page's values unprocessed (see build), the photo as Gradio's file record."""
        c = self.components
        payload = data.get(c.photo)
        photo_path = None if payload is None else c.photo.preprocess(ImageData(**payload))
        if not photo_path:
            raise FalcoError("Upload a photo first.")
        session: Session = data[c.session]
        # Runs skip Gradio's preprocessing, and with it its check that a file was uploaded: any caller of the event
        # could name any image on the server.  The session's own photo (Gradio checked it on its way in), an
        # upload or an example are what a page can show.
        if photo_path != session.photo and not self._known_file(photo_path):
            raise FalcoError(PHOTO_NOT_UPLOADED)
        if data.get(c.picked_for) != photo_path:   # the picker still shows an earlier photo's faces
            raise FalcoError("The faces of this photo are still being found; tick them once they are "
                             "numbered, then run again.")
        form = RunForm(photo_path, tuple(data.get(c.picked) or ()),
                       data.get(c.margins_text) if compare else str(data.get(c.margin)),
                       data.get(c.steps), data.get(c.lr), data.get(c.lambda_id), data.get(c.lambda_attr),
                       data.get(c.seed), bool(data.get(c.another_fake)))
        settings = settings_from_form(form, self.default_optim, self.config.max_margins if compare else 1,
                                      self.config.max_steps)
        faces = session.detections_for(photo_path)
        if faces is None:   # the session's photo changed since (or its detection failed): find them again
            faces = self.loader.get().detect(read_photo(photo_path))
        return photo_path, replace(settings, faces=check_face_picks(form.faces, faces), detections=faces)

    def show_margin(self, wanted: Any, shown: Any, session: Session) -> dict:
        """After Compare m, the m slider shows the computed results at once (no run): the photo, each face and its
        figures at the computed m nearest to the slider's, saying which m is shown."""
        if session.shown is None or len(session.shown.margins) < 2 or not _is_number(wanted):
            return {}
        c = self.components
        photo, label, items, rows = session.shown.view(float(wanted))
        return {c.result_photo: gr.Image(value=photo, label=label), c.gallery: gr.Gallery(value=items, columns=2),
                c.metrics: rows} | self.show_before_after(shown, wanted, session)

    def show_before_after(self, shown: Any, wanted: Any, session: Session) -> dict:
        """The before/after slider on the photo or face ``shown``, at the m the results show."""
        if session.shown is None or not _is_number(wanted):
            return {self.components.before_after: gr.skip()}   # (an empty dict would be the slider's value)
        pair, label = session.shown.before_after(float(wanted), shown if isinstance(shown, str) else None)
        return {self.components.before_after: gr.ImageSlider(value=pair, label=label)}

    def request_run(self, session: Session, request: gr.Request) -> gr.Timer:
        """Runs when Run or Compare m is clicked, before the run waits in the queue: a Stop from now on ends it, and
        the progress box shows its place in line.  A click while the visitor's run waits or runs starts nothing."""
        if has_events(self.demo, request.session_hash, (self.run, self.compare)):
            raise gr.Error(RUN_GOING, print_exception=False)
        session.ask_run()
        session.asked_at = time.monotonic()
        return gr.Timer(active=True)

    def show_waiting(self, session: Session, request: gr.Request) -> dict:
        """The visitor's place in line and the expected wait, in the progress box, until the run starts."""
        c = self.components
        if session.asked_at is None:   # started (it shows its own progress), or ended
            return {c.waiting: gr.Timer(active=False)}
        place = place_in_line(self.demo, request.session_hash, (self.run, self.compare), "gpu", self.clock.left_s())
        if place is not None:
            return {c.progress: progress_box(html.escape(place.describe()))}
        if time.monotonic() - session.asked_at > self.config.queue_join_s:   # never joined, or cancelled waiting
            session.asked_at = None
            return {c.waiting: gr.Timer(active=False)}
        return {}   # not in line yet, or just taken from it

    def stop(self, session: Session) -> None:
        """Asks the visitor's run (running or waiting) to stop; the run says so itself."""
        session.stops += 1

    def run(self, data: dict):
        yield from self._page_run(data, compare=False)

    def compare(self, data: dict):
        yield from self._page_run(data, compare=True)

    def _page_run(self, data: dict, compare: bool):
        """Streams previews and progress, then the results, as dicts keyed by component; every error and a Stop
        end in the progress box, as the run's last update."""
        c = self.components
        session: Session = data[c.session]
        stops = session.stops_for_run()
        session.last_step, session.asked_at = 0, None
        try:
            try:
                photo_path, settings = self._page_settings(data, compare)
            except Exception as err:
                raise as_gr_error(err) from err
            photo = self._read(photo_path)
            if session.stops != stops:   # Stop clicked while it waited in line (which the progress box showed)
                yield {c.progress: progress_box(STOPPED_WAITING)}
                return
            folder = session.new_folder(self.cache, "run")
            started = time.monotonic()
            # Shown until the first step (inversion, fakes and the first pass take a while): not "waiting" any more.
            yield {c.progress: progress_box("Started: inverting the faces and finding their fakes.")}
            with closing(self._stream(photo, settings)) as events:
                for event in events:
                    if session.stops != stops:
                        # A run stopped before its first step cleared nothing: the earlier results stay.
                        yield {c.progress: progress_box(f"Stopped after step {session.last_step}." if session.last_step
                                                        else STOPPED_EARLY)}
                        return
                    if isinstance(event, StepEvent):
                        yield self._step_update(event, session, folder, settings, compare)
                        continue
                    paths = write_downloads(event, run_record(event), folder)
                    original = session.original_file(photo_path, photo, self.cache)
                    session.drop_others(folder)
                    # Several m: the m slider browses them (show_margin) until the next photo or run.
                    session.shown = Comparison.of(event, folder, original)
                    pair, label = session.shown.before_after(event.margins[0], PHOTO_VIEW)
                    yield {c.progress: progress_box(f"Done: {settings.optim.steps} steps in "
                                                    f"{time.monotonic() - started:.1f} s."),
                           c.result_photo: paths[0],   # the photo at the first m
                           c.gallery: gr.update(value=face_gallery(event, compare, folder),
                                                columns=1 + len(event.margins) if compare else 4),
                           c.metrics: metric_rows(event), c.downloads: paths,
                           c.plot: gr.Plot(margin_plot(event) if compare else None, visible=compare),
                           c.before_after: gr.ImageSlider(value=pair, label=label),
                           c.shown_view: gr.Radio(choices=session.shown.views, value=PHOTO_VIEW, visible=True)}
        except gr.Error as err:
            # The earlier results go with the error: they never sit under a message about another run.
            session.shown = None
            yield {c.progress: progress_box(warning(html.escape(err.message))), **c.cleared()}
            raise

    def _step_update(self, event: StepEvent, session: Session, folder: Path, settings: RunSettings,
                     compare: bool) -> dict:
        c = self.components
        update = {c.progress: progress_html(event)}
        # Until its first step a run shows nothing (Gradio shows it waiting): one stopped or cancelled
        # before then leaves the earlier results as they were.
        if not session.last_step:
            update |= {**c.cleared(), c.session: session}   # a session that ran registers its cleanup
        session.last_step = event.step
        if event.previews:
            update[c.live] = str(folder / f"preview-{event.step}.webp")
            columns = len(settings.margins) if compare else len(event.previews)
            labels = [f"face {f + 1}, m = {m:g}" for f, m in event.items]
            preview_grid(event.previews, settings.optim.preview_size, columns, labels).save(update[c.live])
        return update

    # -- the API --
    def api_anonymize(self, photo: Any, faces: Any, margins: Any, steps: Any, lr: Any, lambda_id: Any,
                      lambda_attr: Any, seed: Any, another_fake: Any):
        """Anonymize the faces of a photo.

        faces: "all" or face numbers ("1,3"; usable faces first, largest first); margins: one
        or more m in [0, 1] separated by commas (several run as one batch); steps 0 uses the
        server's default.  Returns the photo with the faces pasted back (at the first m),
        the per-face images (original, e4e inversion, fake, anonymized at each m), a JSON
        record (parameters, identity cosine and recogniser distance per face and m) and the
        files to download (every image, the W+ codes, the record).
        """
        # Unprocessed values (see build): no check of Gradio's can fail before this handler owns the upload, so
        # the upload goes in every outcome, and every bad value gets the page's words.
        try:
            path = self._api_photo(photo)
        except FalcoError as err:
            raise as_gr_error(err) from err
        owned = self._deletable(path)
        if owned:   # a page session showing the same file holds it too
            UPLOADS.hold(path)
            seen = _inode(path)
        try:
            try:
                form = RunForm(path, parse_faces(faces), margins, steps, lr, lambda_id, lambda_attr, seed, another_fake)
                settings = settings_from_form(form, self.default_optim, self.config.max_margins, self.config.max_steps)
            except FalcoError as err:
                raise as_gr_error(err) from err
            for event in self._stream(self._read(path), settings):
                if isinstance(event, AnonymizationResult):
                    record = run_record(event)
                    with tempfile.TemporaryDirectory(prefix="falco-api-") as folder:
                        # Gradio copies the files into its cache before it resumes this generator.
                        yield event.photo, face_gallery(event), record, write_downloads(event, record, Path(folder))
        finally:
            if owned:
                # Gradio names an upload by its content: calls queued with the same photo use this file after this
                # one, and a file uploaded again since (a new inode) belongs to that upload's call.
                UPLOADS.release(path, delete=api_calls_with(self.demo, "anonymize", path) <= 1
                                and _inode(path) == seen)

    def _api_photo(self, payload: Any) -> str:
        """The path of an API call's photo (Gradio's file record): one in Gradio's cache, or a FalcoError that
        names no server path."""
        if payload is None:
            raise FalcoError("Upload a photo first.")
        path = payload.get("path") if isinstance(payload, dict) else None
        if not isinstance(path, str) or not Path(path).is_absolute() or not (
                Path(path).resolve().is_relative_to(self.cache.resolve())):
            raise FalcoError(PHOTO_NOT_UPLOADED)
        return path

    def _known_file(self, path: str) -> bool:
        """A file Gradio's /upload made, or an example."""
        return path in self.demo.upload_file_set or self._is_example(path)

    def _is_example(self, path: str) -> bool:
        return any(path in getattr(block, "keep_in_cache", ()) for block in self.demo.blocks.values())

    def _deletable(self, path: str) -> bool:
        """Whether ``path`` is an upload that its holders may delete: a file Gradio's /upload made, and not an
        example (anyone may send any path of the cache; examples and other sessions' files must stay)."""
        return path in self.demo.upload_file_set and "falco-session-" not in path and not self._is_example(path)

    # -- layout --
    def build(self) -> gr.Blocks:
        cfg, optim = self.config, self.default_optim
        with gr.Blocks(title="FALCO face anonymization", delete_cache=cfg.cache_sweep_s,
                       analytics_enabled=False) as demo:
            gr.Markdown(INTRO)
            banner = gr.Markdown(self.status_text(), elem_id="falco-status")
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
                self.video_tab = add_video_tab(self)
            with gr.Column(visible=False):   # the named API endpoint's own inputs and outputs
                api_inputs = [api_photo_input(), gr.Textbox("all", label="faces"),
                              gr.Textbox("0", label="margins"), gr.Number(0, label="steps", precision=0),
                              gr.Number(optim.lr, label="lr"), gr.Number(optim.lambda_id, label="lambda_id"),
                              gr.Number(optim.lambda_attr, label="lambda_attr"),
                              gr.Number(optim.seed, label="seed", precision=0),
                              gr.Checkbox(False, label="another_fake")]
                api_outputs = [gr.Image(label="photo", format="png"), gr.Gallery(label="faces", format="png"),
                               gr.JSON(label="record"), gr.File(label="files", file_count="multiple")]
                api_btn = gr.Button()
            gr.Markdown(licence_footer(), elem_id="falco-licences")
            c = self.components = Components(photo, picked_for, picked, margin, margins_text, steps, lr, lambda_id,
                                             lambda_attr, seed, another_fake, session, progress, live, result_photo,
                                             gallery, metrics, plot, downloads, faces_view, faces_text, before_after,
                                             shown_view, gr.Timer(1.0, active=False))

            timer = gr.Timer(1.0, active=self.loader.status()[0] == "loading")
            timer.tick(self.status_update, outputs=[banner, timer], queue=False, api_visibility="private")
            demo.load(self.status_update, outputs=[banner, timer], queue=False, api_visibility="private")
            # Unprocessed inputs: Gradio's own checks of the form (the picker's choices, the numbers' bounds) raise
            # its messages with a server traceback, and a pick made before the new photo's faces were numbered
            # fails the picker's check; _page_settings checks every value and says what is wrong.
            runs = []
            for button, handler in ((run_btn, self.run), (compare_btn, self.compare)):
                # Every click reaches request_run (Gradio's default drops clicks while the last one's chain runs),
                # which refuses one while a run is going; .success: a refused click starts nothing.  Queued, but in
                # a line of its own that never waits: only a queued event's error reaches the visitor as a toast.
                requested = button.click(self.request_run, inputs=[session], outputs=[c.waiting],
                                         concurrency_id="clicks", concurrency_limit=None, show_progress="hidden",
                                         api_visibility="private", trigger_mode="multiple")
                runs.append(requested.success(handler, inputs=c.form, outputs=c.results, show_progress_on=[live],
                                           concurrency_id="gpu", api_visibility="private", preprocess=False))
            stop_btn.click(self.stop, inputs=[session], queue=False, api_visibility="private")
            c.waiting.tick(self.show_waiting, inputs=[session], outputs=[progress, c.waiting], queue=False,
                           show_progress="hidden", api_visibility="private")
            margin.change(self.show_margin, inputs=[margin, shown_view, session],
                          outputs=[result_photo, gallery, metrics, before_after], queue=False, show_progress="hidden",
                          api_visibility="private")
            shown_view.change(self.show_before_after, inputs=[shown_view, margin, session], outputs=[before_after],
                              queue=False, show_progress="hidden", api_visibility="private")
            # A new photo ends a run on the previous one and clears its results.
            photo.change(self.on_photo, inputs=[photo, session], cancels=runs,
                         outputs=[*c.results, faces_view, picked, faces_text, picked_for],
                         concurrency_id="detect", concurrency_limit=2, api_visibility="private")
            api_btn.click(self.api_anonymize, inputs=api_inputs, outputs=api_outputs, api_name="anonymize",
                          concurrency_id="gpu", preprocess=False)
        demo.queue(max_size=cfg.queue_max_size, default_concurrency_limit=1)
        self.demo = demo
        return demo


def build_app(weights: str | None = None, device: str | torch.device | None = None,
              config: AppConfig = AppConfig(), loader: EngineLoader | None = None,
              load_now: bool = True) -> tuple[gr.Blocks, FalcoApp]:
    """The app, ready to ``launch``; its pipeline starts loading in the background.

    weights: Hub repo id or local folder (default: FALCO_WEIGHTS_REPO or the project's repo).
    device: a torch.device already decided, or a name to decide from: "cuda", "cpu", ... (default: CUDA when
    there is one, or on ZeroGPU).
    """
    gpu = zerogpu_decorator(config.zerogpu_duration_s)
    video_gpu = zerogpu_decorator(VideoConfig().zerogpu_duration_s)
    if not isinstance(device, torch.device):   # not decided yet (start_app decides it before the fetch)
        device = app_device(device, zerogpu=gpu is not None)   # ZeroGPU: each decorated call gets a GPU
    loader = loader or EngineLoader(pipeline_factory(lambda: fetch_weights(weights), device))
    app = FalcoApp(loader, config, on_gpu=device.type == "cuda", gpu=gpu, video_gpu=video_gpu)
    demo = app.build()
    if load_now:
        loader.start()
    return demo, app


def launch_app(demo: gr.Blocks, config: AppConfig = AppConfig(), host: str | None = None,
               port: int | None = None, **kwargs: Any):
    """``demo.launch`` with the app's limits; host/port None use GRADIO_SERVER_NAME/PORT or Gradio's defaults."""
    return demo.launch(server_name=host, server_port=port, max_file_size=config.max_upload_bytes,
                       show_error=True, css=PAGE_CSS, **kwargs)
