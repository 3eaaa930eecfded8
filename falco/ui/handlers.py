"""What the page's controls do, but the Video tab's (falco.ui.video_tab) and the API's (falco.ui.api).

The banner, a new photo's faces, Run, Compare m and Stop, the m slider and the before/after view, a run's
place in line; and the GPU line that the photo runs of the page and the API share (``stream``).
``PageHandlers`` is one instance per process; falco.ui.layout builds the page over it.

A run is a generator that streams the optimisation; Gradio's queue runs one job at a time and
tells a waiting visitor their place.  Run, Compare m and the API read their values as one
RunForm and turn them into settings the same way (falco.ui.form).  Stop asks the visitor's run
to stop; the run itself then says "Stopped after step k" as its last update, so no step update
already on its way can land after it.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import ImageData
from PIL import Image

from falco.checks import check_face_picks
from falco.config import AppConfig, OptimConfig
from falco.errors import FalcoError
from falco.faces.detect import NO_FACE_MESSAGE
from falco.results import AnonymizationResult, StepEvent
from falco.ui import uploads
from falco.ui.downloads import run_record, write_downloads
from falco.ui.engine import EngineLoader
from falco.ui.form import RunForm, RunSettings, settings_from_form
from falco.ui.gpu_slots import ZeroGpuSlots
from falco.ui.messages import (
    PHOTO_NOT_UPLOADED,
    RUN_GOING,
    STOPPED_EARLY,
    STOPPED_WAITING,
    describe_error,
    zerogpu_refusal,
)
from falco.ui.queue_state import RunClock, has_events, place_in_line
from falco.ui.render import (
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
from falco.ui.sessions import Session, read_photo
from falco.ui.video_tab import VideoHost, VideoTab


def as_gr_error(err: BaseException) -> gr.Error:
    """``err`` as the gr.Error a handler raises: one line for the visitor (describe_error logs what is worth it)."""
    return gr.Error(describe_error(err), print_exception=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


class PageHandlers:
    """The handlers of the banner and the Photo tab, and what the API and the Video tab share with them: the
    engine, the server's defaults, Gradio's cache, the GPU line for photos, Stop.  One instance per process."""
    components: Components   # set by falco.ui.layout.build_page, with demo: the page built over these handlers
    demo: gr.Blocks

    def __init__(self, loader: EngineLoader, config: AppConfig = AppConfig(), on_gpu: bool = True,
                 slots: ZeroGpuSlots | None = None):
        self.loader, self.config, self.on_gpu, self.slots = loader, config, on_gpu, slots
        self.default_optim = OptimConfig() if on_gpu else config.cpu_optim
        self.cache = Path(gr.utils.get_upload_folder())   # Gradio's cache: files there are served as they are
        self.clock = RunClock()   # the pace of the photo run holding the GPU line, for the expected waits
        # On ZeroGPU only this part holds a GPU, for the seconds its work needs; loading, detection and files stay
        # outside.
        self._device_run = slots.for_photos(self._anonymize) if slots is not None else self._anonymize
        # The Video tab's own handlers, over what they need of these.
        self.video_tab = VideoTab(VideoHost(loader=loader, cache=self.cache, deletable=self.deletable, stop=self.stop,
                                            slots=slots, default_optim=self.default_optim, on_gpu=on_gpu))

    # The GPU work.  Arguments cross a process boundary on ZeroGPU, so: a photo and settings.
    def _anonymize(self, photo: Image.Image, settings: RunSettings) -> Iterator[StepEvent | AnonymizationResult]:
        engine = self.loader.get()
        yield from engine.anonymize(photo, faces=settings.faces, margins=settings.margins, optim=settings.optim,
                                    fake_k=self.config.another_fake_k if settings.another_fake else 1,
                                    detections=settings.detections)

    @staticmethod
    def read(photo_path: str) -> Image.Image:
        """The photo at ``photo_path``; every error becomes a gr.Error."""
        try:
            return read_photo(photo_path)
        except Exception as err:
            raise as_gr_error(err) from err

    def stream(self, photo: Image.Image, settings: RunSettings) -> Iterator[StepEvent | AnonymizationResult]:
        """A photo run in the GPU line: StepEvents then the AnonymizationResult; every error becomes a gr.Error
        (ZeroGPU's refusals the page's own line)."""
        try:
            if self.slots is not None:
                self.slots.check_photo(settings)   # before asking ZeroGPU for a slot it would refuse
            self.loader.get()   # wait for the networks here, not inside the GPU slot
            self.clock.start()
            with self.loader.running():   # the bank grows only while no run goes (falco.ui.grower)
                for event in self._device_run(photo, settings):
                    if isinstance(event, StepEvent):
                        self.clock.tick(event.step, event.total_steps)
                    yield event
        except gr.Error as err:
            if (refusal := zerogpu_refusal(err)) is not None:
                raise gr.Error(refusal, print_exception=False) from err
            raise
        except Exception as err:
            raise as_gr_error(err) from err
        finally:
            self.clock.stop()

    def deletable(self, path: str) -> bool:
        """Whether ``path`` is an upload that its holders may delete (falco.ui.uploads)."""
        return uploads.deletable(self.demo, path)

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
        if self.deletable(photo_path):
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
        take the page's values unprocessed (see falco.ui.layout), the photo as Gradio's file record."""
        c = self.components
        payload = data.get(c.photo)
        photo_path = None if payload is None else c.photo.preprocess(ImageData(**payload))
        if not photo_path:
            raise FalcoError("Upload a photo first.")
        session: Session = data[c.session]
        # Runs skip Gradio's preprocessing, and with it its check that a file was uploaded: any caller of the event
        # could name any image on the server.  The session's own photo (Gradio checked it on its way in), an
        # upload or an example are what a page can show.
        if photo_path != session.photo and not uploads.known_file(self.demo, photo_path):
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
            photo = self.read(photo_path)
            if session.stops != stops:   # Stop clicked while it waited in line (which the progress box showed)
                yield {c.progress: progress_box(STOPPED_WAITING)}
                return
            folder = session.new_folder(self.cache, "run")
            started = time.monotonic()
            # Shown until the first step (inversion, fakes and the first pass take a while): not "waiting" any more.
            yield {c.progress: progress_box("Started: inverting the faces and finding their fakes.")}
            with closing(self.stream(photo, settings)) as events:
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
