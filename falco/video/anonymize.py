"""A clip anonymized person by person: tracks, one optimisation per track, then every frame rendered.

    for event in anonymize_video(pipeline, "clip.mp4", "out.mp4", margin=0.0):
        if isinstance(event, VideoProgress): ...        # stage, done/total, an optimisation step's previews
        else: result = event                            # VideoResult, always last
    anonymize_video(pipeline, "clip.mp4", ["out.m0.mp4", "out.m0.5.mp4"], margins=(0.0, 0.5))   # one clip per m

1. Tracking, once whatever the number of m: faces detected and linked into tracks (falco.video.tracks); a
   frame where a track's face was missed (a blink, motion blur; a gap of at most ``track_gap`` frames) gets
   landmarks interpolated between the detections either side, so that it is anonymized too; landmarks
   smoothed over time (falco.video.smoothing) so that crops and paste-back do not jitter.
2. Identity: per track, FALCO's optimisation runs once on its key frame, every m in one batch (as a
   photo's faces run); the track's offset at each m is the optimised W+ minus the key frame's inversion,
   non-zero in the trained rows (3..7) only.
3. Rendering, one decode for every m (falco.video.render): per frame and face, align -> e4e -> + the
   track's offset -> generator -> paste back into that m's clip.  ``refine_steps`` K > 0 runs K
   optimisation steps per face, warm-started from the offset code, for quality at K times the cost.

The engine's public steps (falco.pipeline.FalcoPipeline: ``settings``, ``anonymize``, ``invert``,
``render``, ``fake_w``, ``loss``, ``refine``) do the work; the engine knows nothing of clips.  The clips
are written under temporary names and renamed at the end: an error, a clip without faces or a consumer
that stops iterating leaves nothing behind, for any m.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from falco.checks import check_refine_steps
from falco.config import OptimConfig, VideoConfig
from falco.errors import FalcoError, NoFaceError
from falco.pipeline import FalcoPipeline
from falco.results import AnonymizationResult, FaceResult, LatentsFile, StepEvent, face_record
from falco.video.io import VideoInfo, probe_video, read_frames
from falco.video.render import ClipWriters, FrameRenderer, Identity, render_frames
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
class TrackResult(Identity):
    """A person of the clip at one m: the offset and the key frame's result (``face``, whose ``margin`` is the m)
    of Identity, and where the person is."""
    track: int                         # counts from 1
    key_frame: int
    landmarks: dict[int, np.ndarray] = field(repr=False)   # smoothed landmarks per frame (photo pixels)
    filled_frames: list[int] = field(default_factory=list)   # frames with no detection, landmarks interpolated

    @property
    def frames(self) -> list[int]:
        """Frame indices where the person is anonymized (filled ones included)."""
        return sorted(self.landmarks)

    def record(self) -> dict:
        """The person's entry in a clip's record: where they are, then what a photo's face records."""
        return {"track": self.track, "first_frame": self.frames[0], "last_frame": self.frames[-1],
                "frames": len(self.frames), "filled_frames": len(self.filled_frames), "key_frame": self.key_frame,
                **face_record(self.face)}


@dataclass(frozen=True)
class VideoResult(LatentsFile):
    LATENTS_WHAT: ClassVar[str] = VIDEO_FILE_METADATA

    paths: list[Path]                  # the anonymized clips, one per m
    info: VideoInfo                    # the source's
    tracks: list[TrackResult]          # margins x persons, m-major: every person at the first m, then the next
    margins: tuple[float, ...]
    params: dict
    seconds: dict[str, float]          # per stage

    @property
    def path(self) -> Path:
        """The clip at the first m (the only one at one m)."""
        return self.paths[0]

    @property
    def persons(self) -> int:
        return len(self.tracks) // len(self.margins)

    def track_records(self) -> list[dict]:
        """One entry per person and m, in ``tracks``' order; each holds its m."""
        return [t.record() for t in self.tracks]

    def video_record(self) -> dict:
        i = self.info
        return {"frames": i.frames, "fps": float(i.fps), "width": i.width, "height": i.height,
                "rotation": i.rotation, "seconds": i.seconds, "video_codec": i.codec, "audio_codec": i.audio_codec}

    def record(self) -> dict:
        """The clip's record, as the Video tab and the command line write it (the command line adds its own
        keys: source, status, outputs, settings, seconds)."""
        return {"video": self.video_record(), "tracks": self.track_records(), "params": self.params}

    def latent_tensors(self) -> dict[str, torch.Tensor]:
        """The persons' codes at the first m (see VIDEO_FILE_METADATA)."""
        tracks = self.tracks[:self.persons]
        return {"offset": torch.stack([t.offset.float() for t in tracks]),
                "wplus_key": torch.stack([t.face.wplus.float() for t in tracks]),
                "wplus_key_inversion": torch.stack([t.face.wplus_inversion.float() for t in tracks]),
                "track": torch.tensor([t.track for t in tracks]),
                "key_frame": torch.tensor([t.key_frame for t in tracks]),
                "fake_index": torch.tensor([t.face.fake_index for t in tracks])}


def track_faces(pipeline: FalcoPipeline, source: VideoInfo, config: VideoConfig,
                ) -> Iterator[VideoProgress | list[Track]]:
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


def build_identity(pipeline: FalcoPipeline, track: Track, tracks: int, margins: Sequence[float], optim: OptimConfig,
                   fake_k: int) -> Iterator[VideoProgress | AnonymizationResult]:
    """FALCO's optimisation on the track's key frame, every m in one batch: VideoProgress per step, then the key
    frame's result (its ``faces``: the person at each m, in the order of ``margins``)."""
    for event in pipeline.anonymize(track.key_photo, faces=[0], margins=margins, optim=optim, fake_k=fake_k,
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


def clip_paths(out_path: str | Path | Sequence[str | Path], margins: tuple[float, ...], source: Path) -> list[Path]:
    """One output path per m (``out_path``: a path alone for one m), none of them the source nor another's."""
    paths = [Path(out_path)] if isinstance(out_path, (str, Path)) else [Path(p) for p in out_path]
    if len(paths) != len(margins):
        raise FalcoError(f"{len(margins)} value(s) of m need as many output paths, not {len(paths)}.")
    resolved = [p.resolve() for p in paths]
    if source.resolve() in resolved:
        raise FalcoError("The anonymized clip cannot replace its source: give another output name.")
    if len(set(resolved)) != len(resolved):
        raise FalcoError("Each m needs an output path of its own: two of them name the same file.")
    return paths


def anonymize_video(pipeline: FalcoPipeline, source: str | Path, out_path: str | Path | Sequence[str | Path],
                    margins: Sequence[float] | None = None, optim: OptimConfig | None = None,
                    fake_k: int | None = None, refine_steps: int | None = None, codec: str | None = None,
                    config: VideoConfig = VideoConfig(), max_seconds: float | None = None,
                    margin: float | None = None) -> Iterator[VideoProgress | VideoResult]:
    """VideoProgress events, then one VideoResult; the anonymized clips are in place once it is yielded.

    margins: the m values in [0, 1], or ``margin``: one m (default, as for a photo: DEFAULT_MARGIN; every default and
    check is ``FalcoPipeline.settings``'); ``out_path``: one path per m, in their order (a path alone for one m).
    The clip is tracked once and each person optimised once for every m; each m gets its clip.  refine_steps:
    per-frame steps (default ``config.refine_steps``); codec: the video encoder (default ``config.video_codec``: the
    source's); max_seconds: refuse longer clips (default ``config.max_seconds``).  Bad settings and unusable clips
    are a FalcoError before any work."""
    if margin is not None and margins is not None:
        raise ValueError("give margins or margin, not both")
    run = pipeline.settings((margin,) if margin is not None else margins, optim, fake_k)
    refine_steps = check_refine_steps(config.refine_steps if refine_steps is None else refine_steps)
    info = probe_video(source, config, max_seconds)
    paths = clip_paths(out_path, run.margins, info.path)
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
    at_m: list[list[TrackResult]] = [[] for _ in run.margins]   # per m, per person
    key_params: dict = {}
    for track in tracks:
        for event in build_identity(pipeline, track, len(tracks), run.margins, run.optim, run.fake_k):
            if isinstance(event, VideoProgress):
                yield event
                continue
            key_params = event.params
            for results, face in zip(at_m, event.faces):
                results.append(TrackResult(offset=track_offset(face, run.optim.trained_rows), face=face,
                                           track=track.number, key_frame=track.key_frame,
                                           landmarks=track.landmarks, filled_frames=track.filled))
        track.key_photo = None   # the frame is no longer needed
    results = [r for per_person in at_m for r in per_person]
    seconds["identity"] = time.monotonic() - started

    started = time.monotonic()
    if not refine_steps:
        pipeline.page_out("arcface", "farl")   # the frames need e4e and the generator only
    renderer = FrameRenderer(pipeline, results, run.margins, run.optim, config, refine_steps)
    with ClipWriters(paths, info, writer_codec(codec, config), config) as writers:
        # Closed before the writers are: a stop lets the frames being encoded finish before the clips go.
        with closing(render_frames(renderer, info, [t.landmarks for t in tracks], writers, config)) as rendering:
            for done in rendering:
                yield VideoProgress("rendering", done, info.frames)
    seconds["rendering"] = time.monotonic() - started
    # What the key frames' runs recorded (optimisation, fake k, bank, weights, device, version), and the video's own.
    params = {"margins": list(run.margins), **{k: key_params[k] for k in ("optim", "fake_k", "bank", "weights",
                                                                          "device", "falco_version")},
              "refine_steps": refine_steps, "video_codec": writer_codec(codec, config),
              "video": {k: v for k, v in asdict(config).items() if k not in ("container_formats", "extensions")}}
    yield VideoResult(paths, info, results, run.margins, params, {k: round(v, 3) for k, v in seconds.items()})


def writer_codec(codec: str | None, config: VideoConfig) -> str | None:
    return codec if codec is not None else config.video_codec
