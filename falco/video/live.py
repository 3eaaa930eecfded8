"""A webcam anonymized live: frames in, frames out, one at a time (the page's Video tab, on a GPU).

The first ``live_build_seconds`` of frames find the persons and each one's key frame, and are shown
blurred (no face leaves unanonymized); then each person's identity is optimised once
(``live_steps`` steps) and every later frame is rendered as a clip's frames are (falco.video.render):
align at the person's current landmarks, e4e, + the person's offset, generator, paste.  A person who
first appears later gets their identity at once (that frame waits for it).  Landmarks are smoothed
online with the One-Euro filter; a person missed in a frame (a blink, motion blur) within ``track_gap``
frames of their last detection keeps their last landmarks there, so that their face stays covered.
Each frame's landmarks go to the renderer as they are (``shown``); nothing of the identities is rewritten.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import replace

import numpy as np
from PIL import Image, ImageFilter

from falco.config import OptimConfig, VideoConfig
from falco.pipeline import FalcoPipeline
from falco.results import AnonymizationResult
from falco.video.anonymize import build_identity, track_offset
from falco.video.io import Frame
from falco.video.render import FrameRenderer, Identity
from falco.video.smoothing import OneEuroFilter
from falco.video.tracks import FaceTracker, Track


class LiveAnonymizer:
    def __init__(self, pipeline: FalcoPipeline, margin: float, optim: OptimConfig | None = None,
                 config: VideoConfig = VideoConfig()):
        self.pipeline, self.margin, self.config = pipeline, margin, config
        self.optim = replace(optim or OptimConfig(), steps=config.live_steps)
        self.tracker = FaceTracker(pipeline.analyzer, pipeline.recognizer, config)
        self.index = 0
        self.started: float | None = None
        self.results: dict[int, Identity] = {}         # track number -> its identity
        self.filters: dict[int, OneEuroFilter] = {}
        self.smoothed: dict[int, np.ndarray] = {}       # track number -> its latest smoothed landmarks
        self.shown: dict[int, np.ndarray] = {}          # track number -> the landmarks anonymized in the last frame
        self.renderer: FrameRenderer | None = None
        self.numbers: list[int] = []                    # the renderer's persons, as track numbers
        self.times: deque[float] = deque(maxlen=30)

    @property
    def building(self) -> bool:
        return self.started is None or time.monotonic() - self.started < self.config.live_build_seconds

    @property
    def fps(self) -> float:
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-9)

    def feed(self, pixels: np.ndarray, now: float | None = None) -> np.ndarray:
        """The frame [H, W, 3] uint8 RGB anonymized (blurred while the identities are being built)."""
        now = time.monotonic() if now is None else now
        self.started = now if self.started is None else self.started
        pixels = np.ascontiguousarray(pixels[..., :3])
        photo = Image.fromarray(pixels, "RGB")
        placed = self.tracker.update(self.index, photo)
        index, self.index = self.index, self.index + 1
        out = self._frame(Frame(index, None, pixels), photo, placed, now)
        self.times.append(time.monotonic())
        return out

    def _frame(self, frame: Frame, photo: Image.Image, placed: list, now: float) -> np.ndarray:
        # Smoothed while building too: a person missed in the first rendered frame still has landmarks there.
        for track, face in placed:
            smoother = self.filters.setdefault(track.number, OneEuroFilter(
                self.config.smooth_min_cutoff, self.config.smooth_beta, self.config.smooth_d_cutoff))
            self.smoothed[track.number] = smoother(face.landmarks, now)
        if now - self.started < self.config.live_build_seconds:
            return np.asarray(photo.filter(ImageFilter.GaussianBlur(max(photo.size) / 40)))
        # Detected now or missed for at most track_gap frames (a blink): a missed face keeps its last landmarks.
        shown = [t for t in self.tracker.tracks if frame.index - t.last_frame <= self.config.track_gap]
        for track in shown:
            if track.number not in self.results:
                self._build(track)
        self.shown = {track.number: self.smoothed[track.number] for track in shown}
        renderer = self._renderer()
        aligned = renderer.align(frame, {self.numbers.index(n): points for n, points in self.shown.items()}, photo)
        renderer.render(aligned.items)
        return renderer.paste(aligned)[0]

    def _build(self, track: Track) -> None:
        for event in build_identity(self.pipeline, track, len(self.tracker.tracks), (self.margin,), self.optim, 1):
            if isinstance(event, AnonymizationResult):
                face = event.faces[0]
                self.results[track.number] = Identity(track_offset(face, self.optim.trained_rows), face)
        track.key_photo = None
        self.renderer = None

    def _renderer(self) -> FrameRenderer:
        if self.renderer is None:
            self.numbers = sorted(self.results)
            self.renderer = FrameRenderer(self.pipeline, [self.results[n] for n in self.numbers], (self.margin,),
                                          self.optim, self.config)
        return self.renderer
