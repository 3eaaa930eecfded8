"""The page's Video tab: a clip in, the anonymized clip out beside it; a live webcam on a GPU.

``VideoTab(host).build()`` builds the tab inside the page's Blocks (falco.ui.layout calls it) over
what it needs of the page (``VideoHost``): its engine, defaults, Gradio cache, upload rule and Stop.
A clip's files (previews, the result, its record) live in the visitor's session folder and go when
the session ends, as the upload does (falco.ui.sessions).  Clips are written as H.264 MP4, which browsers play.
On ZeroGPU a clip runs in one GPU call sized to its frames (falco.ui.gpu_slots): the tab says how long a clip
that is, and refuses a longer one before asking.  The tab's example is the project's own clip, made from the
example photo (falco.video.synthetic) and shipped beside it; clicking it runs it.
"""

from __future__ import annotations

import html
import shutil
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from falco.config import OptimConfig, VideoConfig
from falco.output_files import save_json
from falco.ui.engine import EngineLoader
from falco.ui.gpu_slots import ClipSize, ZeroGpuSlots
from falco.ui.messages import describe_error, zerogpu_refusal
from falco.ui.render import preview_grid, warning
from falco.ui.sessions import Session, end_session
from falco.video.anonymize import VideoProgress, VideoResult, anonymize_video
from falco.video.io import probe_video
from falco.video.live import LiveAnonymizer
from falco.video.synthetic import EXAMPLE_CLIP

STAGE_LABELS = {"tracking": "Finding and tracking the faces", "identity": "New identity",
                "rendering": "Rendering the frames"}


@dataclass(frozen=True)
class VideoHost:
    """What the Video tab needs of the page it sits in (falco.ui.handlers.PageHandlers makes it)."""
    loader: EngineLoader                   # the engine, built once per process
    cache: Path                            # Gradio's cache: the session folders go there
    deletable: Callable[[str], bool]       # whether an upload is one its holders may delete (falco.ui.uploads)
    stop: Callable[[Session], None]        # the page's Stop: asks the visitor's run to stop
    slots: ZeroGpuSlots | None             # ZeroGPU's slots, each sized to its work; None elsewhere
    default_optim: OptimConfig             # the server's optimisation defaults (lower on a CPU)
    on_gpu: bool


def clip_limit(app: VideoHost, config: VideoConfig = VideoConfig()) -> float:
    return config.app_max_seconds if app.on_gpu else config.app_cpu_max_seconds


def stage_bars(stages: dict[str, tuple[int, int, str]]) -> str:
    """One labelled progress bar per stage reached: {stage key: (done, total, label)}."""
    rows = [f'<div class="falco-video-stage" data-stage="{key}">{html.escape(label)}: '
            f'<progress value="{done}" max="{max(total, 1)}"></progress> {done}/{total}</div>'
            for key, (done, total, label) in stages.items()]
    return video_box("".join(rows))


def video_box(text: str) -> str:
    # Not the photo's progress box: an element id names one element of the page.
    return f'<div id="falco-video-stages">{text}</div>'


class VideoTab:
    """The Video tab's handlers; ``app`` is what they need of the page."""

    def __init__(self, app: VideoHost, config: VideoConfig = VideoConfig()):
        self.app, self.config = app, config
        # On ZeroGPU only the clip's GPU work holds a GPU, for the time its frames need; loading stays outside.
        self._device_run = app.slots.for_clips(self._anonymize) if app.slots is not None else self._anonymize

    def _anonymize(self, clip: str, out, margin: float, optim, max_seconds: float, size: ClipSize):
        """The clip's GPU work; ``size`` is what its ZeroGPU slot is sized from (falco.ui.gpu_slots)."""
        yield from anonymize_video(self.app.loader.get(), clip, out, margin=margin, optim=optim,
                                   codec=self.config.app_video_codec, config=self.config, max_seconds=max_seconds)

    def run(self, clip: str | None, margin: float, session: Session):
        """Streams the stages' progress and previews, then the clip and its downloads; Stop ends it at the next
        stage's update with nothing written (the clip goes under a temporary name until it is complete)."""
        app = self.app
        stages: dict[str, tuple[int, int, str]] = {}
        stops = session.stops_for_run()
        try:
            if not clip:
                raise gr.Error("Upload a clip first.", print_exception=False)
            if app.deletable(clip):   # an upload of this session: deleted with it
                session.hold(clip)
            optim = app.default_optim   # m travels on its own (anonymize_video's margin)
            limit = clip_limit(app, self.config)
            info = probe_video(clip, self.config, limit)   # an unusable clip is refused before any wait
            size = ClipSize(info.frames, info.width, info.height, optim.steps)
            if app.slots is not None:
                app.slots.check_clip(size)   # before asking ZeroGPU for a slot it would refuse
            folder = session.new_folder(app.cache, "video")
            out = folder / "anonymized.mp4"
            started = time.monotonic()
            app.loader.get()   # wait for the networks here, not inside the GPU slot
            result = None
            # The bank grows only while no run goes (falco.ui.grower).
            with app.loader.running(), closing(
                    self._device_run(clip, out, float(margin), optim, limit, size)) as events:
                for event in events:
                    if session.stops != stops:
                        break
                    if isinstance(event, VideoResult):
                        result = event
                        break
                    yield self._progress(event, stages, folder)
            if result is None:   # stopped: closing the run removed its unfinished clip
                shutil.rmtree(folder, ignore_errors=True)
                yield {self.progress: video_box("Stopped: nothing was written."), self.session: session}
                return
            record = folder / "anonymized.json"
            save_json(record, result.record())
            session.drop_others(folder)
            stages["done"] = (1, 1, f"Done in {time.monotonic() - started:.1f} s: {len(result.tracks)} person(s), "
                                    f"{result.info.frames} frames")
            yield {self.progress: stage_bars(stages), self.result: str(out), self.downloads: [str(out), str(record)],
                   self.session: session}
        except Exception as err:
            ours = isinstance(err, gr.Error) and zerogpu_refusal(err) is None   # the tab's own, or ZeroGPU's
            message = err.message if ours else describe_error(err)
            yield {self.progress: video_box(warning(html.escape(message))), self.result: None,
                   self.downloads: None, self.session: session}
            raise (err if ours else gr.Error(message, print_exception=False)) from err

    def _progress(self, event: VideoProgress, stages: dict, folder) -> dict:
        label = STAGE_LABELS[event.stage]
        key = event.stage
        if event.stage == "identity":
            key, label = f"identity-{event.track}", f"{label}, person {event.track} of {event.tracks} (steps)"
        stages[key] = (event.done, event.total, label)
        update = {self.progress: stage_bars(stages)}
        if event.step is not None and event.step.previews:
            path = folder / f"preview-{event.track}-{event.done}.webp"
            preview_grid(event.step.previews, self.app.default_optim.preview_size, 1,
                         [f"person {event.track}"]).save(path)
            update[self.live] = str(path)
        return update

    # -- the webcam --
    def stream(self, frame, margin: float, live):
        """One webcam frame anonymized, and the frame rate."""
        if frame is None:
            return None, "", live
        if live is None or live.margin != float(margin):
            live = LiveAnonymizer(self.app.loader.get(), float(margin), self.app.default_optim, self.config)
        out = live.feed(frame)
        state = "building each person's new identity" if live.building else f"{live.fps:.1f} frames per second"
        return out, state, live

    def build(self) -> None:
        cfg, app = self.config, self.app
        limit = clip_limit(app, cfg)
        with gr.Tab("Video", elem_id="falco-video-tab"):
            zerogpu = "" if app.slots is None else f" {app.slots.clip_limit_text(app.default_optim.steps)}"
            gr.Markdown(f"Upload a clip of at most **{limit:g} s** (the limit of this server"
                        f"{'' if app.on_gpu else ', which runs on a CPU: each frame takes seconds'}).{zerogpu} Each "
                        "person is tracked through the clip and gets one new identity, kept in every frame; frame "
                        "rate, frames and sound are kept. Or click the example: it runs at once.",
                        elem_id="falco-video-limit")
            self.session = gr.State(Session(), delete_callback=end_session)
            with gr.Row():
                with gr.Column():
                    clip = gr.Video(label="Clip", sources=["upload"], elem_id="falco-video-in")
                    self.example = gr.Examples([[str(EXAMPLE_CLIP)]], inputs=[clip], cache_examples=False,
                                               label="Example (made from the example photo)",
                                               elem_id="falco-video-example", api_visibility="private")
                    margin = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Identity margin m",
                                       elem_id="falco-video-margin")
                    with gr.Row():
                        run = gr.Button("Anonymize the clip", variant="primary", elem_id="falco-video-run")
                        stop = gr.Button("Stop", variant="stop", elem_id="falco-video-stop")
                with gr.Column():
                    self.progress = gr.HTML(elem_id="falco-video-progress")
                    self.live = gr.Image(label="New identity (live)", interactive=False, elem_id="falco-video-live")
                    self.result = gr.Video(label="Anonymized clip", interactive=False, elem_id="falco-video-out")
                    self.downloads = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                             elem_id="falco-video-downloads")
            # Run, and a click on the example once it is in the clip's box.
            for clicked in (run.click, self.example.load_input_event.then):
                requested = clicked(Session.ask_run, inputs=[self.session], queue=False, api_visibility="private")
                requested.then(self.run, inputs=[clip, margin, self.session],
                               outputs=[self.progress, self.live, self.result, self.downloads, self.session],
                               concurrency_id="gpu", api_visibility="private")
            stop.click(app.stop, inputs=[self.session], queue=False, api_visibility="private")
            with gr.Accordion("Live webcam", open=False):
                if app.on_gpu:
                    with gr.Row():
                        camera = gr.Image(sources=["webcam"], streaming=True, label="Webcam",
                                          elem_id="falco-webcam")
                        shown = gr.Image(label="Anonymized", elem_id="falco-webcam-out")
                    rate = gr.Markdown(elem_id="falco-webcam-fps")
                    live = gr.State(None)
                    camera.stream(self.stream, inputs=[camera, margin, live], outputs=[shown, rate, live],
                                  stream_every=0.05, concurrency_id="webcam", api_visibility="private")
                else:
                    gr.Markdown("The live webcam mode needs a GPU; this server has none.",
                                elem_id="falco-webcam-none")

