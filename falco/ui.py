"""The Gradio front end: page layout, event handlers and the named API endpoint.

``app.py`` parses the command line and calls ``build_app(...)`` then ``launch``; all the
page does lives here, so tests build exactly the same app in-process.

Process and sessions: the pipeline loads once per process, in a background thread, so
the page is served at once and says when the networks are ready (or why they are not).
A run is a generator that streams the optimisation; Gradio's queue runs one job at a
time and tells a waiting visitor their place.  Nothing of a visitor is kept in globals:
their values live in components and in a ``gr.State`` whose files go when the session
ends.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import save_file

from falco.config import DLIB_SAME_PERSON_DISTANCE, AppConfig, OptimConfig
from falco.errors import FalcoError
from falco.faces import DetectedFace, load_photo
from falco.pipeline import WPLUS_FILE_METADATA, AnonymizationResult, StepEvent
from falco.serving import EngineLoader, app_device, describe_error, pipeline_factory, zerogpu_available

log = logging.getLogger(__name__)

EXAMPLES = (Path(__file__).resolve().parent / "assets" / "astronaut.jpg",)
INTRO = """# FALCO: face anonymization that keeps the attributes
Every face in your photo is replaced by a **different person** with the same pose, expression,
lighting and age (Barattin et al., CVPR 2023).

1. Upload a photo, take one with the webcam, or pick the example.  Every face found gets a number.
2. Tick the faces to anonymize (all by default) and set **m**: at 0 the new face is as unlike the
   original as the face recogniser can tell; higher values keep more of the identity.
3. **Run** streams the optimisation as it goes; **Compare m** runs several values of m at once.
"""


# --- Errors ---------------------------------------------------------------------------
def _as_gr_error(err: BaseException) -> gr.Error:
    # describe_error logs what is worth a log (an unexpected error with its traceback, running out of
    # memory); FalcoErrors are expected outcomes (no face, bad file).
    return gr.Error(describe_error(err), print_exception=False)


def zerogpu_decorator(duration_s: int) -> Callable | None:
    """``spaces.GPU(duration=...)`` on a ZeroGPU Space; None elsewhere."""
    if not zerogpu_available():
        return None
    import spaces
    return spaces.GPU(duration=duration_s)


# --- What one run asks for ---------------------------------------------------------------
@dataclass(frozen=True)
class RunSettings:
    faces: tuple[int, ...] | None      # 0-based indices in detection order; None: every usable face
    margins: tuple[float, ...]
    optim: OptimConfig
    another_fake: bool                 # draw the fake among the k nearest (seeded) instead of the nearest
    detections: list[DetectedFace] | None = None   # this photo's faces, when the page already found them


def parse_faces(text: str) -> tuple[int, ...] | None:
    """ "all" (or empty) -> None; "1, 3" -> (0, 2)."""
    text = (text or "").strip().lower()
    if text in ("", "all"):
        return None
    try:
        numbers = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise FalcoError(f"Faces must be 'all' or face numbers separated by commas, not {text!r}.") from None
    if not numbers or min(numbers) < 1:
        raise FalcoError("Face numbers start at 1.")
    return tuple(sorted({n - 1 for n in numbers}))


def parse_margins(text: str, limit: int) -> tuple[float, ...]:
    """ "0, 0.5;1" -> (0.0, 0.5, 1.0), each in [0, 1], repeats dropped."""
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise FalcoError(f"m values must be numbers between 0 and 1 separated by commas, not {text!r}.") from None
    if not values:
        raise FalcoError("Give at least one value of m.")
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise FalcoError("Every m must lie between 0 and 1.")
    if len(values) > limit:
        raise FalcoError(f"At most {limit} values of m in one run.")
    return tuple(dict.fromkeys(values))


def optim_settings(base: OptimConfig, steps: float, lr: float, lambda_id: float, lambda_attr: float,
                   seed: float, max_steps: int) -> OptimConfig:
    if not 1 <= int(steps) <= max_steps or lr <= 0 or lambda_id < 0 or lambda_attr < 0:
        raise FalcoError(f"Steps must lie between 1 and {max_steps}, the learning rate above 0, "
                         "and the lambdas must not be negative.")
    return replace(base, steps=int(steps), lr=float(lr), lambda_id=float(lambda_id),
                   lambda_attr=float(lambda_attr), seed=int(seed))


# --- Pictures and text for the page ----------------------------------------------------------
def annotate_faces(photo: Image.Image, faces: Sequence[DetectedFace]) -> Image.Image:
    """The photo with each face's crop outline and a numbered tag (grey: not usable)."""
    canvas = photo.copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(photo.size) / 300))
    font = ImageFont.load_default(size=max(14, round(max(photo.size) / 25)))
    for number, face in enumerate(faces, start=1):
        colour = (46, 204, 64) if face.usable else (170, 170, 170)
        quad = [tuple(map(float, p)) for p in face.quad]
        draw.line(quad + quad[:1], fill=colour, width=width)
        x, y = min(p[0] for p in quad), min(p[1] for p in quad)
        left, top, right, bottom = draw.textbbox((x, y), str(number), font=font)
        pad = width * 2
        draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=colour)
        draw.text((x, y), str(number), fill=(0, 0, 0), font=font)
    return canvas


def face_summary(faces: Sequence[DetectedFace]) -> tuple[list[tuple[str, int]], list[int], str]:
    """(choices, ticked, text) for the face picker; unusable faces are listed with their reason."""
    choices = [(f"Face {i + 1}", i) for i, f in enumerate(faces) if f.usable]
    lines = [f"- Face {i + 1} cannot be anonymized: {f.reason}" for i, f in enumerate(faces) if not f.usable]
    found = f"Found {len(faces)} face{'s' if len(faces) != 1 else ''}, {len(choices)} usable."
    return choices, [value for _, value in choices], "\n".join([found, *lines])


def preview_strip(images: Sequence[Image.Image], tile: int) -> Image.Image:
    """The previews side by side, each tile x tile (previews of a small generator are smaller than that)."""
    strip = Image.new("RGB", (tile * len(images), tile))
    for i, image in enumerate(images):
        strip.paste(image.convert("RGB").resize((tile, tile), Image.BILINEAR), (i * tile, 0))
    return strip


def progress_html(event: StepEvent) -> str:
    cosines = ", ".join(f"face {f + 1}, m = {m:g}: {c:.3f}"
                        for (f, m), c in zip(event.items, event.identity_cosine, strict=True))
    return (f'<div id="falco-progress"><progress value="{event.step}" max="{event.total_steps}" '
            f'style="width:100%"></progress><div>Step <b>{event.step}</b> / {event.total_steps} &middot; '
            f"identity cosine {cosines}</div></div>")


def verdict(distance: float) -> str:
    return "same person" if distance < DLIB_SAME_PERSON_DISTANCE else "different person"


def metric_rows(result: AnonymizationResult) -> list[list[Any]]:
    return [[r.face_index + 1, r.margin, round(r.identity_cosine, 4), round(r.recognizer_distance, 4),
             verdict(r.recognizer_distance)] for r in result.faces]


METRIC_HEADERS = ["face", "m", "identity cosine (ArcFace)", "recogniser distance (dlib)", "verdict"]


def face_gallery(result: AnonymizationResult, compare: bool = False) -> list[tuple[Image.Image, str]]:
    """Per face: the original aligned (then its e4e inversion and fake neighbour, unless comparing), then
    the anonymized face at each m.  Comparing, a face's images are one row of the gallery."""
    items, seen = [], set()
    for r in result.faces:
        name = f"Face {r.face_index + 1}"
        if r.face_index not in seen:
            seen.add(r.face_index)
            items.append((r.aligned, f"{name}: original"))
            if not compare:
                items += [(r.inversion, f"{name}: e4e inversion"), (r.fake, f"{name}: fake neighbour")]
        caption = (f"m = {r.margin:g} (cosine {r.identity_cosine:.3f}, {verdict(r.recognizer_distance)})" if compare
                   else f"{name}: anonymized, m = {r.margin:g}, cosine {r.identity_cosine:.3f}")
        items.append((r.anonymized, caption))
    return items


def run_record(result: AnonymizationResult) -> dict[str, Any]:
    """Parameters and per-face outcome of a run, for the JSON download and the API."""
    return {"params": result.params, "faces": result.face_records()}


def write_downloads(result: AnonymizationResult, record: dict[str, Any], folder: Path) -> list[str]:
    """The images, the W+ codes and the JSON record of a run, as files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for margin, photo in zip(result.margins, result.photos, strict=True):
        paths.append(folder / f"photo_m{margin:g}.png")
        photo.save(paths[-1])
    for r in result.faces:
        number = r.face_index + 1   # as the page and the record number faces
        images = {f"face{number}_{kind}.png": getattr(r, kind) for kind in ("aligned", "inversion", "fake")}
        images[f"face{number}_m{r.margin:g}_anonymized.png"] = r.anonymized
        for name, image in images.items():
            if folder / name not in paths:
                image.save(folder / name)
                paths.append(folder / name)
    codes = folder / "wplus.safetensors"
    save_file(result.latent_tensors(), str(codes), metadata={"what": WPLUS_FILE_METADATA})
    params = folder / "run.json"
    params.write_text(json.dumps(record, indent=2))
    return [str(p) for p in [*paths, codes, params]]


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


# --- The session ---------------------------------------------------------------------------
@dataclass
class Session:
    """One visitor's state: the photos they uploaded (removed when the session ends) and
    the faces found in the current photo (so a run does not detect them again)."""
    uploads: set[str] = field(default_factory=set)
    photo: str | None = None
    detections: list[DetectedFace] | None = None

    def detections_for(self, photo_path: str | None) -> list[DetectedFace] | None:
        return self.detections if photo_path is not None and photo_path == self.photo else None

    def forget(self) -> None:
        for path in self.uploads:
            Path(path).unlink(missing_ok=True)
        self.uploads.clear()


def _end_session(session: Session | None) -> None:
    if session is not None:
        session.forget()


# --- The app -------------------------------------------------------------------------------------
class FalcoApp:
    """Handlers of the page and the API.  One instance per process."""

    def __init__(self, loader: EngineLoader, config: AppConfig = AppConfig(), on_gpu: bool = True,
                 gpu: Callable | None = None):
        self.loader, self.config, self.on_gpu = loader, config, on_gpu
        self.default_optim = OptimConfig() if on_gpu else config.cpu_optim
        # On ZeroGPU only this part holds a GPU; loading, detection and files stay outside.
        self._device_run = gpu(self._anonymize) if gpu is not None else self._anonymize

    # The GPU work.  Arguments cross a process boundary on ZeroGPU, so: a photo and settings.
    def _anonymize(self, photo: Image.Image, settings: RunSettings) -> Iterator[StepEvent | AnonymizationResult]:
        engine = self.loader.get()
        yield from engine.anonymize(photo, faces=settings.faces, margins=settings.margins, optim=settings.optim,
                                    fake_k=self.config.another_fake_k if settings.another_fake else 1,
                                    detections=settings.detections)

    def _stream(self, photo_path: str | None, settings: RunSettings) -> Iterator[StepEvent | AnonymizationResult]:
        """StepEvents then the AnonymizationResult; every error becomes a gr.Error."""
        try:
            if not photo_path:
                raise FalcoError("Upload a photo first.")
            photo = load_photo(photo_path)
            self.loader.get()   # wait for the networks here, not inside the GPU slot
            yield from self._device_run(photo, settings)
        except gr.Error:
            raise
        except Exception as err:
            raise _as_gr_error(err) from err

    # -- page handlers --
    def status_text(self) -> str:
        state, line = self.loader.status()
        cpu = self.default_optim
        notice = "" if self.on_gpu else (
            f"\n\n**Running on CPU**: a run takes minutes, not seconds. Defaults are lowered to {cpu.steps} steps"
            f"{' with the losses at 256 px' if cpu.loss_on_skip256 else ''}; the paper uses {OptimConfig().steps}.")
        icon = {"ready": "✅", "loading": "⏳", "failed": "⚠️"}[state]
        return f"{icon} {line}{notice}"

    def status_update(self) -> tuple[str, gr.Timer]:
        """Refreshes the banner until the load has ended either way."""
        return self.status_text(), gr.Timer(active=self.loader.status()[0] == "loading")

    def on_photo(self, photo_path: str | None, session: Session):
        """Detects the faces of a new photo: numbered outlines, the face picker and a summary."""
        session.photo, session.detections = photo_path, None
        if not photo_path:
            return None, gr.CheckboxGroup(choices=[], value=[]), "", session
        if photo_path not in self.photo.keep_in_cache:   # example files are shared by every session
            session.uploads.add(photo_path)
        try:
            photo = load_photo(photo_path)
            faces = self.loader.get().detect(photo)
        except Exception as err:
            return None, gr.CheckboxGroup(choices=[], value=[]), f"⚠️ {describe_error(err)}", session
        session.detections = faces
        if not faces:
            return photo, gr.CheckboxGroup(choices=[], value=[]), "⚠️ No face was found in this photo.", session
        choices, ticked, text = face_summary(faces)
        return annotate_faces(photo, faces), gr.CheckboxGroup(choices=choices, value=ticked), text, session

    def _ui_settings(self, photo_path: str | None, session: Session, picked: list[int],
                     margins: tuple[float, ...], steps, lr, lambda_id, lambda_attr, seed, another_fake) -> RunSettings:
        if not picked:
            raise gr.Error("Tick at least one face to anonymize.", print_exception=False)
        try:
            optim = optim_settings(self.default_optim, steps, lr, lambda_id, lambda_attr, seed, self.config.max_steps)
        except FalcoError as err:
            raise _as_gr_error(err) from err
        return RunSettings(tuple(sorted(picked)), margins, optim, bool(another_fake),
                           session.detections_for(photo_path))

    def _ui_run(self, photo_path: str | None, settings: RunSettings, compare: bool):
        """Streams previews and progress, then the results, as dicts keyed by component."""
        c = self.components
        yield {c.progress: '<div id="falco-progress">Starting…</div>', c.live: None, c.result_photo: None,
               c.gallery: [], c.metrics: [], c.downloads: None}
        started = time.monotonic()
        for event in self._stream(photo_path, settings):
            if isinstance(event, StepEvent):
                update = {c.progress: progress_html(event)}
                if event.previews:
                    update[c.live] = preview_strip(event.previews, settings.optim.preview_size)
                yield update
                continue
            with tempfile.TemporaryDirectory(prefix="falco-run-") as folder:
                paths = write_downloads(event, run_record(event), Path(folder))
                # Gradio copies the files into its cache before it resumes this generator.
                yield {c.progress: f'<div id="falco-progress">Done: {settings.optim.steps} steps in '
                                   f"{time.monotonic() - started:.1f} s.</div>",
                       c.result_photo: event.photo,
                       c.gallery: gr.update(value=face_gallery(event, compare),
                                            columns=1 + len(event.margins) if compare else 4),
                       c.metrics: metric_rows(event), c.downloads: paths}

    def run(self, photo_path, picked, margin, steps, lr, lambda_id, lambda_attr, seed, another_fake, session):
        settings = self._ui_settings(photo_path, session, picked, (float(margin),), steps, lr, lambda_id,
                                     lambda_attr, seed, another_fake)
        yield from self._ui_run(photo_path, settings, compare=False)

    def compare(self, photo_path, picked, margins_text, steps, lr, lambda_id, lambda_attr, seed, another_fake,
                session):
        try:
            margins = parse_margins(margins_text, self.config.max_margins)
        except FalcoError as err:
            raise _as_gr_error(err) from err
        settings = self._ui_settings(photo_path, session, picked, margins, steps, lr, lambda_id, lambda_attr,
                                     seed, another_fake)
        yield from self._ui_run(photo_path, settings, compare=True)

    def api_anonymize(self, photo: str, faces: str, margins: str, steps: float, lr: float, lambda_id: float,
                      lambda_attr: float, seed: float, another_fake: bool):
        """Anonymize the faces of a photo.

        faces: "all" or face numbers ("1,3"; usable faces first, largest first); margins: one
        or more m in [0, 1] separated by commas (several run as one batch); steps 0 uses the
        server's default.  Returns the photo with the faces pasted back (at the first m),
        the per-face images (original, e4e inversion, fake, anonymized at each m), a JSON
        record (parameters, identity cosine and recogniser distance per face and m) and the
        files to download (every image, the W+ codes, the record).
        """
        try:
            base = self.default_optim
            settings = RunSettings(parse_faces(faces), parse_margins(margins, self.config.max_margins),
                                   optim_settings(base, steps or base.steps, lr, lambda_id, lambda_attr, seed,
                                                  self.config.max_steps),
                                   bool(another_fake))
        except FalcoError as err:
            raise _as_gr_error(err) from err
        for event in self._stream(photo, settings):
            if isinstance(event, AnonymizationResult):
                record = run_record(event)
                with tempfile.TemporaryDirectory(prefix="falco-api-") as folder:
                    yield event.photo, face_gallery(event), record, write_downloads(event, record, Path(folder))

    # -- layout --
    def build(self) -> gr.Blocks:
        cfg, optim = self.config, self.default_optim
        with gr.Blocks(title="FALCO face anonymization", delete_cache=cfg.cache_sweep_s,
                       analytics_enabled=False) as demo:
            gr.Markdown(INTRO)
            banner = gr.Markdown(self.status_text(), elem_id="falco-status")
            session = gr.State(Session(), delete_callback=_end_session)
            with gr.Row():
                with gr.Column(scale=2):
                    photo = photo_input(label="Photo", sources=["upload", "webcam", "clipboard"],
                                        elem_id="falco-photo")
                    gr.Examples([[str(p)] for p in EXAMPLES if p.exists()], inputs=[photo], label="Example")
                    faces_view = gr.Image(label="Faces found", interactive=False, elem_id="falco-faces")
                    faces_text = gr.Markdown(elem_id="falco-faces-text")
                    picked = gr.CheckboxGroup(label="Faces to anonymize", choices=[], value=[], type="value",
                                              elem_id="falco-picked")
                    margin = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Identity margin m",
                                       info="0: as unlike the original as possible; 1: keeps the identity")
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
                    downloads = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                        elem_id="falco-downloads")
            with gr.Column(visible=False):   # the named API endpoint's own inputs and outputs
                api_inputs = [photo_input(label="photo"), gr.Textbox("all", label="faces"),
                              gr.Textbox("0", label="margins"), gr.Number(0, label="steps", precision=0),
                              gr.Number(optim.lr, label="lr"), gr.Number(optim.lambda_id, label="lambda_id"),
                              gr.Number(optim.lambda_attr, label="lambda_attr"),
                              gr.Number(optim.seed, label="seed", precision=0),
                              gr.Checkbox(False, label="another_fake")]
                api_outputs = [gr.Image(label="photo", format="png"), gr.Gallery(label="faces", format="png"),
                               gr.JSON(label="record"), gr.File(label="files", file_count="multiple")]
                api_btn = gr.Button()
            self.photo = photo
            self.components = _Outputs(progress, live, result_photo, gallery, metrics, downloads)

            timer = gr.Timer(1.0, active=self.loader.status()[0] == "loading")
            timer.tick(self.status_update, outputs=[banner, timer], queue=False, api_visibility="private")
            demo.load(self.status_update, outputs=[banner, timer], queue=False, api_visibility="private")
            photo.change(self.on_photo, inputs=[photo, session], outputs=[faces_view, picked, faces_text, session],
                         concurrency_id="detect", concurrency_limit=2, api_visibility="private")
            advanced = [steps, lr, lambda_id, lambda_attr, seed, another_fake]
            outputs = [progress, live, result_photo, gallery, metrics, downloads]
            run_event = run_btn.click(self.run, inputs=[photo, picked, margin, *advanced, session], outputs=outputs,
                                      show_progress_on=[live], concurrency_id="gpu", api_visibility="private")
            compare_event = compare_btn.click(self.compare, inputs=[photo, picked, margins_text, *advanced, session],
                                              outputs=outputs, show_progress_on=[live], concurrency_id="gpu",
                                              api_visibility="private")
            stop_btn.click(None, cancels=[run_event, compare_event])
            api_btn.click(self.api_anonymize, inputs=api_inputs, outputs=api_outputs, api_name="anonymize",
                          concurrency_id="gpu")
        demo.queue(max_size=cfg.queue_max_size, default_concurrency_limit=1)
        return demo


@dataclass(frozen=True)
class _Outputs:
    progress: gr.HTML
    live: gr.Image
    result_photo: gr.Image
    gallery: gr.Gallery
    metrics: gr.Dataframe
    downloads: gr.File


def build_app(weights: str | None = None, device: str | None = None, config: AppConfig = AppConfig(),
              loader: EngineLoader | None = None, load_now: bool = True) -> tuple[gr.Blocks, FalcoApp]:
    """The app, ready to ``launch``; its pipeline starts loading in the background.

    weights: Hub repo id or local folder (default: FALCO_WEIGHTS_REPO or the project's repo).
    device: "cuda", "cpu", ... (default: CUDA when there is one, or on ZeroGPU).
    """
    gpu = zerogpu_decorator(config.zerogpu_duration_s)
    # ZeroGPU: the model moves to the GPU that each decorated call gets
    device = app_device(device, zerogpu=gpu is not None)
    on_gpu = torch.device(device).type == "cuda"
    loader = loader or EngineLoader(pipeline_factory(weights, device))
    app = FalcoApp(loader, config, on_gpu=on_gpu, gpu=gpu)
    demo = app.build()
    if load_now:
        loader.start()
    return demo, app


def launch_app(demo: gr.Blocks, config: AppConfig = AppConfig(), host: str | None = None,
               port: int | None = None, **kwargs: Any):
    """``demo.launch`` with the app's limits; host/port None use GRADIO_SERVER_NAME/PORT or Gradio's defaults."""
    return demo.launch(server_name=host, server_port=port, max_file_size=config.max_upload_bytes,
                       show_error=True, **kwargs)
