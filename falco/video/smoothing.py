"""The One-Euro filter (Casiez, Roussel, Vogel, CHI 2012) on landmark arrays over time.

A low-pass filter whose cutoff rises with speed: a face at rest keeps still crops (no jitter in the
paste-back), a face that moves is followed with little lag.  The filter is a few lines of arithmetic
that no maintained library we depend on provides (the PyPI packages are unmaintained single files).
"""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff: float, dt: float) -> float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Filters arrays of one shape sample by sample; ``reset`` starts afresh (after a gap in a track)."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or t <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = _alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        # One speed per array (the face's), so every landmark moves with the same cutoff and the shape holds.
        speed = float(np.sqrt((self._dx ** 2).sum(-1)).mean())
        a = _alpha(self.min_cutoff + self.beta * speed, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()


def fill_gaps(landmarks: dict[int, np.ndarray], max_gap: int) -> dict[int, np.ndarray]:
    """The landmarks with each gap of a track filled by linear interpolation between the detections either side.

    A gap is filled when its next detection comes at most ``max_gap`` frames after the one before it (the gap the
    tracker itself bridges: a blink, motion blur, a quick turn); a frame left out would show the original face."""
    filled = dict(landmarks)
    frames = sorted(landmarks)
    for before, after in zip(frames, frames[1:]):
        if after - before > max_gap:
            continue
        start, stop = np.asarray(landmarks[before], np.float64), np.asarray(landmarks[after], np.float64)
        for index in range(before + 1, after):
            share = (index - before) / (after - before)
            filled[index] = (1 - share) * start + share * stop
    return dict(sorted(filled.items()))


def smooth_track(landmarks: dict[int, np.ndarray], fps: float, min_cutoff: float, beta: float,
                 d_cutoff: float) -> dict[int, np.ndarray]:
    """Each frame's landmarks of one track, filtered in frame order; the filter restarts after a missing frame."""
    smoothed: dict[int, np.ndarray] = {}
    one_euro = OneEuroFilter(min_cutoff, beta, d_cutoff)
    previous = None
    for index in sorted(landmarks):
        if previous is not None and index != previous + 1:
            one_euro.reset()
        smoothed[index] = one_euro(landmarks[index], index / fps)
        previous = index
    return smoothed
