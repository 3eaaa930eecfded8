"""The Gradio front end: page layout, event handlers and the named API endpoint.

``app.py`` parses the command line and calls ``build_app(...)`` then ``launch``; all the
page does lives here, so tests build exactly the same app in-process.

Process and sessions: the pipeline loads once per process, in a background thread, so
the page is served at once and says when the networks are ready (or why they are not).
A run is a generator that streams the optimisation; Gradio's queue runs one job at a
time and tells a waiting visitor their place.  A visitor's values live in components and
in a ``gr.State`` (``Session``); every file the page shows them is written in the
session's own folder inside Gradio's cache (Gradio serves files there as they are, so no
other session shares them), and the folder goes when the session ends.  Uploads are the
exception: Gradio names them by content, so two visitors with the same photo share one
file, which ``SharedFiles`` deletes when the last session holding it ends.
"""

from __future__ import annotations

import html
import json
import logging
import math
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from gradio.data_classes import ImageData
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import save_file

from falco.checks import SEED_LIMIT
from falco.config import DLIB_SAME_PERSON_DISTANCE, AppConfig, OptimConfig
from falco.errors import FalcoError
from falco.faces import DetectedFace, load_photo
from falco.pipeline import WPLUS_FILE_METADATA, AnonymizationResult, FaceResult, StepEvent
from falco.serving import EngineLoader, app_device, describe_error, pipeline_factory, zerogpu_available

log = logging.getLogger(__name__)

PHOTO_GONE = "The photo is no longer on the server; please upload it again."

EXAMPLES = (Path(__file__).resolve().parent / "assets" / "astronaut.jpg",)
INTRO = """# FALCO: face anonymization that keeps the attributes
Every face in your photo is replaced by a **different person** with the same pose, expression,
lighting and age (Barattin et al., CVPR 2023).

1. Upload a photo, take one with the webcam, or pick the example.  Every face found gets a number.
2. Tick the faces to anonymize (all by default) and set **m**: at 0 the new face is as unlike the
   original as the face recogniser can tell; higher values keep more of the identity.
3. **Run** streams the optimisation as it goes; **Compare m** runs several values of m at once.
"""
# Gradio's file list offers to remove each file of a list, downloads included.
PAGE_CSS = "#falco-downloads .label-clear-button { display: none; }"


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
    """The form's numbers over ``base``; a FalcoError of one line for any that is missing or out of range."""
    numbers = {"Steps": steps, "The learning rate": lr, "lambda_id": lambda_id, "lambda_attr": lambda_attr,
               "The seed": seed}
    for name, value in numbers.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FalcoError(f"{name} must be a number.")
    if not 1 <= int(steps) <= max_steps or lr <= 0 or lambda_id < 0 or lambda_attr < 0:
        raise FalcoError(f"Steps must lie between 1 and {max_steps}, the learning rate above 0, "
                         "and the lambdas must not be negative.")
    if seed != int(seed) or not 0 <= int(seed) < SEED_LIMIT:
        raise FalcoError(f"The seed must be a whole number from 0 to 2**63 - 1, not {seed:g}.")
    return replace(base, steps=int(steps), lr=float(lr), lambda_id=float(lambda_id),
                   lambda_attr=float(lambda_attr), seed=int(seed))


def read_photo(path: str) -> Image.Image:
    """The uploaded photo at ``path``; gone from the server (its session ended): a FalcoError that shows no path."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise FalcoError(PHOTO_GONE) from None
    return load_photo(data)


def check_picks(picked: Sequence[Any], faces: Sequence[DetectedFace]) -> tuple[int, ...]:
    """The ticked faces (0-based), each one of this photo's usable faces."""
    if not picked:
        raise FalcoError("Tick at least one face to anonymize.")
    if any(not isinstance(i, int) or not 0 <= i < len(faces) or not faces[i].usable for i in picked):
        raise FalcoError("The faces ticked are not among this photo's faces; tick them again.")
    return tuple(sorted(set(picked)))


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


def preview_grid(images: Sequence[Image.Image], tile: int, columns: int) -> Image.Image:
    """The previews in rows of ``columns``, each tile x tile (previews of a small generator are smaller)."""
    columns = max(1, min(columns, len(images)))
    grid = Image.new("RGB", (tile * columns, tile * math.ceil(len(images) / columns)))
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB").resize((tile, tile), Image.BILINEAR), (i % columns * tile, i // columns * tile))
    return grid


def progress_box(text: str) -> str:
    return f'<div id="falco-progress">{text}</div>'


def stopped_html(progress: str | None) -> str:
    """What the progress box says after Stop: "Stopped" over a run's steps, else unchanged (a run stopped
    before its first step leaves the earlier results and their line)."""
    progress = progress or ""
    if "Step <b>" not in progress:
        return progress
    return progress_box(f"Stopped after step {progress.split('Step <b>', 1)[1].split('</b>', 1)[0]}.")


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


def face_files(r: FaceResult) -> dict[str, Image.Image]:
    """A face result's images by their download file name (faces numbered from 1, as on the page)."""
    number = r.face_index + 1
    return {f"face{number}_aligned.png": r.aligned, f"face{number}_inversion.png": r.inversion,
            f"face{number}_fake.png": r.fake, f"face{number}_m{r.margin:g}_anonymized.png": r.anonymized}


def face_gallery(result: AnonymizationResult, compare: bool = False,
                 folder: Path | None = None) -> list[tuple[Image.Image | str, str]]:
    """Per face: the original aligned (then its e4e inversion and fake neighbour, unless comparing), then
    the anonymized face at each m.  Comparing, a face's images are one row of the gallery.
    ``folder``: where ``write_downloads`` put this result; the gallery then shows those files."""
    items, seen = [], set()
    for r in result.faces:
        name = f"Face {r.face_index + 1}"
        aligned, inversion, fake, anonymized = (str(folder / f) if folder else image
                                                for f, image in face_files(r).items())
        if r.face_index not in seen:
            seen.add(r.face_index)
            items.append((aligned, f"{name}: original"))
            if not compare:
                items += [(inversion, f"{name}: e4e inversion"), (fake, f"{name}: fake neighbour")]
        caption = (f"m = {r.margin:g} (cosine {r.identity_cosine:.3f}, {verdict(r.recognizer_distance)})" if compare
                   else f"{name}: anonymized, m = {r.margin:g}, cosine {r.identity_cosine:.3f}")
        items.append((anonymized, caption))
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
        for name, image in face_files(r).items():
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
class SharedFiles:
    """Files that several holders may use at once, deleted when the last one lets go.

    Gradio stores an upload at a path named by its content, so two visitors (or one who
    reloaded the page) who upload the same photo get the same file."""

    def __init__(self):
        self._lock = threading.Lock()
        self._holders: Counter[str] = Counter()

    def hold(self, path: str) -> None:
        with self._lock:
            self._holders[path] += 1

    def release(self, path: str) -> None:
        with self._lock:
            self._holders[path] -= 1
            if self._holders[path] > 0:
                return
            del self._holders[path]
            Path(path).unlink(missing_ok=True)


UPLOADS = SharedFiles()   # one per process, as Gradio's cache is


@dataclass
class Session:
    """One visitor's state: the photo shown and its faces (so a run does not detect them
    again), the uploads it holds, and its folder of every file the page shows it.  All of
    them go when the session ends."""
    photo: str | None = None
    detections: list[DetectedFace] | None = None
    uploads: set[str] = field(default_factory=set)
    folder: str | None = None      # inside Gradio's cache, made at the first file
    made: int = 0                  # subfolders made, to name the next
    stops: int = 0                 # Stop clicks: a run yields nothing more once this changes

    def detections_for(self, photo_path: str | None) -> list[DetectedFace] | None:
        return self.detections if photo_path is not None and photo_path == self.photo else None

    def hold(self, upload: str) -> None:
        if upload not in self.uploads:
            UPLOADS.hold(upload)
            self.uploads.add(upload)

    def new_folder(self, cache: Path, kind: str) -> Path:
        """A new subfolder for one photo's or one run's files."""
        if self.folder is None:
            cache.mkdir(parents=True, exist_ok=True)
            self.folder = tempfile.mkdtemp(prefix="falco-session-", dir=cache)
        self.made += 1
        folder = Path(self.folder) / f"{kind}-{self.made}"
        folder.mkdir()
        return folder

    def drop_others(self, keep: Path) -> None:
        """Removes the subfolders of keep's kind but keep: what the page no longer shows."""
        kind = keep.name.split("-")[0]
        for folder in keep.parent.glob(f"{kind}-*"):
            if folder != keep:
                shutil.rmtree(folder, ignore_errors=True)

    def forget(self) -> None:
        for upload in self.uploads:
            UPLOADS.release(upload)
        self.uploads.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


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
        self.cache = Path(gr.utils.get_upload_folder())   # Gradio's cache: files there are served as they are
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
            photo = read_photo(photo_path)
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

    def on_photo(self, photo_path: str | None, session: Session) -> dict:
        """Detects the faces of a new photo (numbered outlines, the face picker, a summary) and clears
        the previous photo's results."""
        c = self.components
        session.photo, session.detections = photo_path, None
        update = {c.progress: "", c.live: None, c.result_photo: None, c.gallery: [], c.metrics: [],
                  c.downloads: None, c.faces_view: None, c.picked: gr.CheckboxGroup(choices=[], value=[]),
                  c.picked_for: photo_path or "", c.session: session}
        if not photo_path:
            return update | {c.faces_text: ""}
        if photo_path not in self.photo.keep_in_cache:   # example files are shared by every session
            session.hold(photo_path)
        try:
            photo = read_photo(photo_path)
            faces = self.loader.get().detect(photo)
        except Exception as err:
            return update | {c.faces_text: f"⚠️ {describe_error(err)}"}
        session.detections = faces
        folder = session.new_folder(self.cache, "photo")
        session.drop_others(folder)
        update[c.faces_view] = str(folder / "faces.webp")
        annotate_faces(photo, faces).save(update[c.faces_view])
        if not faces:
            return update | {c.faces_text: "⚠️ No face was found in this photo."}
        choices, ticked, text = face_summary(faces)
        return update | {c.picked: gr.CheckboxGroup(choices=choices, value=ticked), c.faces_text: text}

    def _photo_path(self, payload: dict | None) -> str | None:
        # Runs take the page's values unprocessed (see build), the photo as Gradio's file record.
        return None if payload is None else self.photo.preprocess(ImageData(**payload))

    def _ui_settings(self, photo_path: str | None, picked_for: str | None, session: Session, picked: list,
                     margins: tuple[float, ...], steps, lr, lambda_id, lambda_attr, seed,
                     another_fake) -> RunSettings:
        if not photo_path:
            raise FalcoError("Upload a photo first.")
        if picked_for != photo_path:   # the picker still shows an earlier photo's faces
            raise FalcoError("The faces of this photo are still being found; tick them once they are "
                             "numbered, then run again.")
        optim = optim_settings(self.default_optim, steps, lr, lambda_id, lambda_attr, seed, self.config.max_steps)
        faces = session.detections_for(photo_path)
        if faces is None:   # the session's photo changed since (or its detection failed): find them again
            faces = self.loader.get().detect(read_photo(photo_path))
        return RunSettings(check_picks(picked, faces), margins, optim, bool(another_fake), faces)

    def _ui_run(self, session: Session, ask: Callable[[], tuple[str, RunSettings]], compare: bool):
        """Streams previews and progress, then the results, as dicts keyed by component.  ``ask`` gives the
        photo and settings (or raises a FalcoError); every error ends in the progress box."""
        c = self.components
        try:
            try:
                photo_path, settings = ask()
            except Exception as err:
                raise _as_gr_error(err) from err
            folder = session.new_folder(self.cache, "run")
            started, first, stops = time.monotonic(), True, session.stops
            for event in self._stream(photo_path, settings):
                if session.stops != stops:   # Stop was clicked: no update may land after its "Stopped"
                    return
                if isinstance(event, StepEvent):
                    update = {c.progress: progress_html(event)}
                    # Until its first step a run shows nothing (Gradio shows it waiting): one stopped or
                    # cancelled before then leaves the earlier results as they were.
                    if first:
                        update |= {c.result_photo: None, c.gallery: [], c.metrics: [], c.downloads: None,
                                   c.session: session}   # a session that ran registers its cleanup
                        first = False
                    if event.previews:
                        update[c.live] = str(folder / f"preview-{event.step}.webp")
                        columns = len(settings.margins) if compare else len(event.previews)
                        preview_grid(event.previews, settings.optim.preview_size, columns).save(update[c.live])
                    yield update
                    continue
                paths = write_downloads(event, run_record(event), folder)
                session.drop_others(folder)
                yield {c.progress: progress_box(f"Done: {settings.optim.steps} steps in "
                                                f"{time.monotonic() - started:.1f} s."),
                       c.result_photo: paths[0],   # the photo at the first m
                       c.gallery: gr.update(value=face_gallery(event, compare, folder),
                                            columns=1 + len(event.margins) if compare else 4),
                       c.metrics: metric_rows(event), c.downloads: paths}
        except gr.Error as err:
            yield {c.progress: progress_box(f"⚠️ {html.escape(err.message)}")}
            raise

    def stop(self, progress: str | None, session: Session) -> str:
        session.stops += 1
        return stopped_html(progress)

    def run(self, photo, picked_for, picked, margin, steps, lr, lambda_id, lambda_attr, seed, another_fake,
            session):
        def ask():
            path = self._photo_path(photo)
            margins = parse_margins(str(margin), 1)
            return path, self._ui_settings(path, picked_for, session, picked, margins, steps, lr, lambda_id,
                                           lambda_attr, seed, another_fake)
        yield from self._ui_run(session, ask, compare=False)

    def compare(self, photo, picked_for, picked, margins_text, steps, lr, lambda_id, lambda_attr, seed,
                another_fake, session):
        def ask():
            path = self._photo_path(photo)
            margins = parse_margins(margins_text or "", self.config.max_margins)
            return path, self._ui_settings(path, picked_for, session, picked, margins, steps, lr, lambda_id,
                                           lambda_attr, seed, another_fake)
        yield from self._ui_run(session, ask, compare=True)

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
        if photo:   # the upload goes with the call, unless a page session shows the same file
            UPLOADS.hold(photo)
        try:
            for event in self._stream(photo, settings):
                if isinstance(event, AnonymizationResult):
                    record = run_record(event)
                    with tempfile.TemporaryDirectory(prefix="falco-api-") as folder:
                        # Gradio copies the files into its cache before it resumes this generator.
                        yield event.photo, face_gallery(event), record, write_downloads(event, record, Path(folder))
        finally:
            if photo:
                UPLOADS.release(photo)

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
                    picked_for = gr.Textbox(visible=False)   # the photo whose faces the picker shows
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
            self.components = _Components(progress, live, result_photo, gallery, metrics, downloads, faces_view,
                                          picked, faces_text, picked_for, session)

            timer = gr.Timer(1.0, active=self.loader.status()[0] == "loading")
            timer.tick(self.status_update, outputs=[banner, timer], queue=False, api_visibility="private")
            demo.load(self.status_update, outputs=[banner, timer], queue=False, api_visibility="private")
            advanced = [steps, lr, lambda_id, lambda_attr, seed, another_fake]
            outputs = [progress, live, result_photo, gallery, metrics, downloads, session]
            # Unprocessed inputs: Gradio's own checks of the form (the picker's choices, the numbers' bounds) raise
            # its messages with a server traceback, and a pick made before the new photo's faces were numbered
            # fails the picker's check; _ui_settings checks every value and says what is wrong.
            run_event = run_btn.click(self.run, inputs=[photo, picked_for, picked, margin, *advanced, session],
                                      outputs=outputs, show_progress_on=[live], concurrency_id="gpu",
                                      api_visibility="private", preprocess=False)
            compare_event = compare_btn.click(self.compare,
                                              inputs=[photo, picked_for, picked, margins_text, *advanced, session],
                                              outputs=outputs, show_progress_on=[live], concurrency_id="gpu",
                                              api_visibility="private", preprocess=False)
            # Queued (never waiting: no limit), so that "Stopped" reaches the page after the run's last update.
            stop_btn.click(self.stop, inputs=[progress, session], outputs=[progress],
                           cancels=[run_event, compare_event], concurrency_limit=None, api_visibility="private")
            # A new photo ends a run on the previous one and clears its results.
            photo.change(self.on_photo, inputs=[photo, session], cancels=[run_event, compare_event],
                         outputs=[*outputs, faces_view, picked, faces_text, picked_for],
                         concurrency_id="detect", concurrency_limit=2, api_visibility="private")
            api_btn.click(self.api_anonymize, inputs=api_inputs, outputs=api_outputs, api_name="anonymize",
                          concurrency_id="gpu")
        demo.queue(max_size=cfg.queue_max_size, default_concurrency_limit=1)
        return demo


@dataclass(frozen=True)
class _Components:
    progress: gr.HTML
    live: gr.Image
    result_photo: gr.Image
    gallery: gr.Gallery
    metrics: gr.Dataframe
    downloads: gr.File
    faces_view: gr.Image
    picked: gr.CheckboxGroup
    faces_text: gr.Markdown
    picked_for: gr.Textbox
    session: gr.State


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
                       show_error=True, css=PAGE_CSS, **kwargs)
