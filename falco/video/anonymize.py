"""A clip anonymized person by person: tracks, one optimisation per track, then every frame rendered.

    for event in anonymize_video(pipeline, "clip.mp4", "out.mp4", margin=0.0):
        if isinstance(event, VideoProgress): ...        # stage, done/total, an optimisation step's previews
        else: result = event                            # VideoResult, always last

1. Tracking: faces detected and linked into tracks (falco.video.tracks); a frame where a track's face was
   missed (a blink, motion blur; a gap of at most ``track_gap`` frames) gets landmarks interpolated between
   the detections either side, so that it is anonymized too; landmarks smoothed over time
   (falco.video.smoothing) so that crops and paste-back do not jitter.
2. Identity: per track, FALCO's optimisation runs once on its key frame; the track's offset is the
   optimised W+ minus the key frame's inversion, non-zero in the trained rows (3..7) only.
3. Rendering: per frame and face, align -> e4e -> + the track's offset -> generator -> paste back;
   faces go through the networks in batches while a thread decodes and aligns the next frames and
   another pastes and encodes the finished ones.  ``refine_steps`` K > 0 runs K optimisation steps
   per face, warm-started from the offset code, for quality at K times the cost.

The clip is written under a temporary name and renamed at the end: an error, a clip without faces or
a consumer that stops iterating leaves nothing behind.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from falco.checks import check_run_settings
from falco.config import DLIB_SAME_PERSON_DISTANCE, BankConfig, OptimConfig, VideoConfig
from falco.errors import FalcoError, NoFaceError
from falco.faces import AlignedFace, align_face, paste_faces
from falco.files import save_tensors
from falco.loss import FalcoLoss
from falco.optimize import optimize_latents
from falco.pixels import to_pixels, to_tensor
from falco.results import AnonymizationResult, FaceResult, StepEvent
from falco.video.io import Frame, VideoInfo, VideoWriter, probe_video, read_frames
from falco.video.smoothing import fill_gaps, smooth_track
from falco.video.tracks import FaceTracker, Track

STAGES = ("tracking", "identity", "rendering")
NO_FACE_IN_CLIP = ("No face that can be anonymized was found in any frame of the clip. Faces should be "
                   "roughly frontal and at least about 40 pixels wide.")
VIDEO_FILE_METADATA = ("FALCO video W+ codes (latent_avg included), one row per person track: offset [tracks, rows, "
                       "dim] added to every frame's e4e inversion (non-zero in the trained rows only), wplus_key and "
                       "wplus_key_inversion the key frames' optimised and inverted codes; track counts from 1")


@dataclass(frozen=True)
class VideoProgress:
    stage: str                         # one of STAGES
    done: int                          # frames tracked or rendered, or optimisation steps of this track
    total: int
    track: int | None = None           # the person being given a new identity (counts from 1)
    tracks: int | None = None          # how many persons
    step: StepEvent | None = None      # that optimisation step (previews every few steps)


@dataclass(frozen=True)
class TrackResult:
    track: int                         # counts from 1
    key_frame: int
    offset: torch.Tensor               # [num_ws, D], added to each frame's inversion; zero outside the trained rows
    face: FaceResult                   # the key frame's result (aligned, inversion, fake, anonymized, figures)
    landmarks: dict[int, np.ndarray] = field(repr=False)   # smoothed landmarks per frame (photo pixels)
    filled_frames: list[int] = field(default_factory=list)   # frames with no detection, landmarks interpolated

    @property
    def frames(self) -> list[int]:
        """Frame indices where the person is anonymized (filled ones included)."""
        return sorted(self.landmarks)

    def record(self) -> dict:
        f = self.face
        return {"track": self.track, "first_frame": self.frames[0], "last_frame": self.frames[-1],
                "frames": len(self.frames), "filled_frames": len(self.filled_frames), "key_frame": self.key_frame,
                "margin": f.margin,
                "identity_cosine": f.identity_cosine, "recognizer_distance": f.recognizer_distance,
                "same_person_for_dlib": f.recognizer_distance < DLIB_SAME_PERSON_DISTANCE,
                "fake_index": f.fake_index, "fake_seed": f.fake_seed}


@dataclass(frozen=True)
class VideoResult:
    path: Path                         # the anonymized clip
    info: VideoInfo                    # the source's
    tracks: list[TrackResult]
    margin: float
    params: dict
    seconds: dict[str, float]          # per stage

    def track_records(self) -> list[dict]:
        return [t.record() for t in self.tracks]

    def video_record(self) -> dict:
        i = self.info
        return {"frames": i.frames, "fps": float(i.fps), "width": i.width, "height": i.height,
                "rotation": i.rotation, "seconds": i.seconds, "video_codec": i.codec, "audio_codec": i.audio_codec}

    def latent_tensors(self) -> dict[str, torch.Tensor]:
        return {"offset": torch.stack([t.offset.float() for t in self.tracks]).contiguous(),
                "wplus_key": torch.stack([t.face.wplus.float() for t in self.tracks]).contiguous(),
                "wplus_key_inversion": torch.stack([t.face.wplus_inversion.float() for t in self.tracks]).contiguous(),
                "track": torch.tensor([t.track for t in self.tracks]),
                "key_frame": torch.tensor([t.key_frame for t in self.tracks]),
                "fake_index": torch.tensor([t.face.fake_index for t in self.tracks])}

    def save_latents(self, path: Path) -> Path:
        return save_tensors(path, self.latent_tensors(), metadata={"what": VIDEO_FILE_METADATA})


def track_faces(pipeline, source: VideoInfo, config: VideoConfig) -> Iterator[VideoProgress | list[Track]]:
    """VideoProgress per frame, then the tracks (gaps filled, landmarks smoothed), persons in order of appearance."""
    tracker = FaceTracker(pipeline.analyzer, pipeline.recognizer, config)
    for frame in read_frames(source.path):
        tracker.update(frame.index, Image.fromarray(frame.pixels, "RGB"))
        yield VideoProgress("tracking", frame.index + 1, source.frames)
    tracks = [t for t in tracker.tracks if len(t.faces) >= config.min_track_frames]
    for track in tracks:
        detected = {i: f.landmarks for i, f in track.faces.items()}
        landmarks = fill_gaps(detected, config.track_gap)
        track.filled = sorted(landmarks.keys() - detected.keys())
        track.landmarks = smooth_track(landmarks, float(source.fps), config.smooth_min_cutoff, config.smooth_beta,
                                       config.smooth_d_cutoff)
    yield tracks


def build_identity(pipeline, track: Track, tracks: int, margin: float, optim: OptimConfig,
                   fake_k: int) -> Iterator[VideoProgress | AnonymizationResult]:
    """FALCO's optimisation on the track's key frame: VideoProgress per step, then the key frame's result."""
    for event in pipeline.anonymize(track.key_photo, faces=[0], margins=(margin,), optim=optim, fake_k=fake_k,
                                    detections=[track.key_face]):
        if isinstance(event, AnonymizationResult):
            yield event
        else:
            yield VideoProgress("identity", event.step, event.total_steps, track.number, tracks, event)


def track_offset(face: FaceResult, rows: tuple[int, int]) -> torch.Tensor:
    """What the optimisation added to the key frame's inversion, in the trained rows only."""
    offset = torch.zeros_like(face.wplus_inversion)
    offset[rows[0]:rows[1]] = face.wplus[rows[0]:rows[1]] - face.wplus_inversion[rows[0]:rows[1]]
    return offset


@dataclass
class _Item:
    """One face of one frame on its way through the networks."""
    frame: int
    track: int                         # index into the results
    aligned: AlignedFace
    anonymized: Image.Image | None = None


class FrameRenderer:
    """Frames in, frames with every tracked face anonymized out: e4e + offset + generator, in batches."""

    def __init__(self, pipeline, results: list[TrackResult], optim: OptimConfig, config: VideoConfig,
                 refine_steps: int = 0):
        self.pipeline, self.results, self.optim, self.config = pipeline, results, optim, config
        self.refine_steps = refine_steps
        device = pipeline.device
        self.offsets = torch.stack([r.offset for r in results]).to(device) if results else None
        self.margins = torch.tensor([r.face.margin for r in results], device=device)
        self.fake_w = pipeline.bank.w[[r.face.fake_index for r in results]].to(device) if results else None
        self.loss = FalcoLoss.for_config(pipeline.nets.arcface, pipeline.nets.farl, optim) if refine_steps else None

    def align(self, frame: Frame) -> tuple[Frame, Image.Image, list[_Item]]:
        photo = Image.fromarray(frame.pixels, "RGB")
        size = self.config.align_size or self.pipeline.nets.e4e.config["input_size"]
        items = [_Item(frame.index, t, align_face(photo, r.landmarks[frame.index], size,
                                                  config=self.pipeline.face_config))
                 for t, r in enumerate(self.results) if frame.index in r.landmarks]
        return frame, photo, items

    @torch.no_grad()
    def codes(self, crops: list[Image.Image], tracks: list[int]) -> torch.Tensor:
        """Each face's W+: its inversion plus its track's offset (rows 3..7 only)."""
        return self.pipeline.invert(crops) + self.offsets[tracks]

    def render(self, items: list[_Item]) -> None:
        """Fills each item's ``anonymized``."""
        if not items:
            return
        crops = [item.aligned.image for item in items]
        tracks = [item.track for item in items]
        wplus = self.codes(crops, tracks)
        if self.refine_steps:
            wplus = self._refine(crops, tracks, wplus)
        for item, pixels in zip(items, to_pixels(self.pipeline.render(wplus))):
            item.anonymized = Image.fromarray(pixels, "RGB")

    def _refine(self, crops: list[Image.Image], tracks: list[int], wplus: torch.Tensor) -> torch.Tensor:
        start, stop = self.optim.trained_rows
        optim = replace(self.optim, steps=self.refine_steps, cuda_graph=False)
        with torch.no_grad():
            real = self.loss.real_features(to_tensor(crops, self.pipeline.device))
        stream = optimize_latents(self.pipeline.nets.generator, self.loss, real, wplus, self.fake_w[tracks],
                                  self.margins[tracks], optim, trained_start=wplus[:, start:stop])
        with closing(stream):
            for step in stream:
                wplus = step.wplus
        return wplus.detach()

    def paste(self, photo: Image.Image, items: list[_Item]) -> np.ndarray:
        if not items:
            return np.asarray(photo)
        return np.asarray(paste_faces(photo, [(item.aligned, item.anonymized) for item in items],
                                      self.pipeline.face_config))


def _read_ahead(frames: Iterator, work, depth: int) -> Iterator:
    """``work(frame)`` for each frame, computed up to ``depth`` ahead in a thread, in order."""
    end = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="falco-decode") as pool:
        def produce():
            frame = next(frames, end)
            return end if frame is end else work(frame)
        pending: deque[Future] = deque(pool.submit(produce) for _ in range(max(depth, 1)))
        try:
            while True:
                value = pending.popleft().result()
                if value is end:
                    return
                pending.append(pool.submit(produce))
                yield value
        finally:
            for future in pending:
                future.cancel()


def render_frames(renderer: FrameRenderer, source: VideoInfo, writer: VideoWriter,
                  config: VideoConfig) -> Iterator[VideoProgress]:
    """Every frame through the renderer into the writer; VideoProgress after each batch."""
    done = 0
    per_pass = config.batch_frames or (2 if renderer.pipeline.device.type == "cpu" else 8)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="falco-encode") as encoder:
        writing: deque[Future] = deque()

        def flush(batch: list[tuple[Frame, Image.Image, list[_Item]]]) -> None:
            renderer.render([item for _, _, items in batch for item in items])
            for frame, photo, items in batch:   # one worker: frames are encoded in order
                writing.append(encoder.submit(
                    lambda f=frame, p=photo, i=items: writer.write(f.pts, renderer.paste(p, i))))
            while len(writing) > config.queue_frames:
                writing.popleft().result()

        batch, faces = [], 0
        frames = read_frames(source.path)
        with closing(frames):
            for aligned in _read_ahead(frames, renderer.align, config.queue_frames):
                batch.append(aligned)
                faces += len(aligned[2])
                if faces >= per_pass or len(batch) >= config.queue_frames:
                    flush(batch)
                    done += len(batch)
                    batch, faces = [], 0
                    yield VideoProgress("rendering", done, source.frames)
            if batch:
                flush(batch)
                done += len(batch)
        while writing:
            writing.popleft().result()
    yield VideoProgress("rendering", done, source.frames)


def anonymize_video(pipeline, source: str | Path, out_path: str | Path, margin: float | None = None,
                    optim: OptimConfig | None = None, fake_k: int | None = None, refine_steps: int | None = None,
                    codec: str | None = None, config: VideoConfig = VideoConfig(),
                    max_seconds: float | None = None) -> Iterator[VideoProgress | VideoResult]:
    """VideoProgress events, then one VideoResult; the anonymized clip is at ``out_path`` once it is yielded.

    margin: m in [0, 1] (default ``optim.margin``); refine_steps: per-frame steps (default
    ``config.refine_steps``); codec: the video encoder (default ``config.video_codec``: the source's);
    max_seconds: refuse longer clips (default ``config.max_seconds``).  Bad settings and unusable clips
    are a FalcoError before any work."""
    optim = optim or OptimConfig()
    fake_k = BankConfig().k_nearest if fake_k is None else fake_k
    refine_steps = config.refine_steps if refine_steps is None else refine_steps
    (margin,) = check_run_settings((optim.margin if margin is None else margin,), optim, fake_k,
                                   len(pipeline.bank))
    if refine_steps < 0:
        raise FalcoError(f"Refine steps must not be negative, not {refine_steps}.")
    info = probe_video(source, config, max_seconds)
    out_path = Path(out_path)
    if out_path.resolve() == info.path.resolve():
        raise FalcoError("The anonymized clip cannot replace its source: give another output name.")
    seconds: dict[str, float] = {}

    started = time.monotonic()
    tracks: list[Track] = []
    for event in track_faces(pipeline, info, config):
        if isinstance(event, VideoProgress):
            yield event
        else:
            tracks = event
    seconds["tracking"] = time.monotonic() - started
    if not tracks:
        raise NoFaceError(NO_FACE_IN_CLIP)

    started = time.monotonic()
    results, key_params = [], {}
    for track in tracks:
        for event in build_identity(pipeline, track, len(tracks), margin, optim, fake_k):
            if isinstance(event, VideoProgress):
                yield event
            else:
                face, key_params = event.faces[0], event.params
                results.append(TrackResult(track.number, track.key_frame,
                                           track_offset(face, optim.trained_rows), face, track.landmarks,
                                           track.filled))
        track.key_photo = None   # the frame is no longer needed
    seconds["identity"] = time.monotonic() - started

    started = time.monotonic()
    renderer = FrameRenderer(pipeline, results, optim, config, refine_steps)
    writer = VideoWriter(out_path, info, writer_codec(codec, config), config)
    with writer:
        yield from render_frames(renderer, info, writer, config)
    seconds["rendering"] = time.monotonic() - started
    # What the key frames' runs recorded (optimisation, fake k, bank, weights, device, version), and the video's own.
    params = {"margin": margin, **{k: key_params[k] for k in ("optim", "fake_k", "bank", "weights", "device",
                                                              "falco_version")},
              "refine_steps": refine_steps, "video_codec": writer_codec(codec, config),
              "video": {k: v for k, v in asdict(config).items() if k not in ("container_formats", "extensions")}}
    yield VideoResult(out_path, info, results, margin, params, {k: round(v, 3) for k, v in seconds.items()})


def writer_codec(codec: str | None, config: VideoConfig) -> str | None:
    return codec if codec is not None else config.video_codec
