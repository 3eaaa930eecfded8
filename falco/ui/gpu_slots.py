"""Fair GPU slots on a ZeroGPU Space: each run asks for the seconds its work needs, never over the cap.

ZeroGPU lends a GPU per call of a function wrapped in ``spaces.GPU(duration=...)``.  It refuses a visitor whose
quota left is under the duration asked, serves short requests sooner and refuses any over a cap, so a fixed,
generous duration turns visitors away before any work starts.  Here the duration is a callable (``spaces``
calls it with the wrapped function's own arguments) that sizes the slot from the work: steps x faces x m values
for a photo, frames x pixels plus each person's steps for a clip (the costs: falco.config.ZeroGpuConfig).  A run
expected to need more than one call may take is refused before it asks, with what to change; a clip runs in one
call, so the Video tab states the longest clip one call can do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from falco.config import ZeroGpuConfig
from falco.errors import FalcoError
from falco.ui.form import RunSettings


@dataclass(frozen=True)
class ClipSize:
    """What a clip's slot is sized from: read from the clip before its GPU call, and handed to it."""
    frames: int
    width: int
    height: int
    steps: int                 # optimisation steps per person
    margins: int = 1           # m values, each person optimised at all of them in one batch

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def step_seconds(config: ZeroGpuConfig, items: int) -> float:
    """One optimisation step of a batch of ``items`` (faces x m values)."""
    return config.step_s + (max(items, 1) - 1) * config.step_item_s


def photo_work_seconds(config: ZeroGpuConfig, steps: int, faces: int, margins: int) -> float:
    """The expected GPU seconds of a photo run (Run: one m; Compare m: several, in one batch)."""
    return config.start_s + faces * config.face_s + steps * step_seconds(config, faces * margins)


def clip_work_seconds(config: ZeroGpuConfig, clip: ClipSize) -> float:
    """The expected GPU seconds of a clip: each person's identity, then every frame tracked and rendered."""
    persons = config.clip_persons
    identity = persons * (config.face_s + clip.steps * step_seconds(config, clip.margins))
    per_frame = clip.megapixels * config.frame_megapixel_s + persons * clip.margins * config.frame_face_s
    return config.start_s + identity + clip.frames * per_frame


def slot_seconds(config: ZeroGpuConfig, work_s: float) -> int:
    """The duration asked for ``work_s`` expected seconds: with the margin, at least the floor, at most the cap."""
    return int(min(config.cap_s, max(config.floor_s, math.ceil(work_s * config.margin))))


def max_clip_frames(config: ZeroGpuConfig, width: int, height: int, steps: int, margins: int = 1) -> int:
    """The most frames of this size that one call is expected to track and render within the cap."""
    empty = clip_work_seconds(config, ClipSize(0, width, height, steps, margins))
    per_frame = clip_work_seconds(config, ClipSize(1, width, height, steps, margins)) - empty
    return max(int((config.cap_s - empty) / per_frame), 0)


def photo_faces(config: ZeroGpuConfig, settings: RunSettings) -> int:
    """The faces a run anonymizes: those picked, else the photo's usable ones, else (not searched yet) the
    number assumed."""
    if settings.faces is not None:
        return len(settings.faces)
    if settings.detections is not None:
        return max(sum(face.usable for face in settings.detections), 1)
    return config.assumed_faces


class ZeroGpuSlots:
    """``spaces.GPU`` over the page's GPU work, each call asking for the seconds its own work needs."""

    def __init__(self, gpu: Callable, config: ZeroGpuConfig = ZeroGpuConfig()):
        self.gpu, self.config = gpu, config   # gpu: the `spaces` package's GPU decorator

    # What a run asks for.
    def photo_work(self, settings: RunSettings) -> float:
        return photo_work_seconds(self.config, settings.optim.steps, photo_faces(self.config, settings),
                                  len(settings.margins))

    def photo_slot(self, photo, settings: RunSettings) -> int:
        """The duration a photo run asks for; called by ``spaces`` with the GPU function's own arguments."""
        return slot_seconds(self.config, self.photo_work(settings))

    def clip_slot(self, clip, out, margin, optim, max_seconds, size: ClipSize) -> int:
        """The duration a clip asks for; called by ``spaces`` with the GPU function's own arguments."""
        return slot_seconds(self.config, clip_work_seconds(self.config, size))

    # The GPU functions, wrapped.
    def for_photos(self, run: Callable) -> Callable:
        """``run(photo, settings)`` on a lent GPU for the seconds its settings need."""
        return self.gpu(duration=self.photo_slot)(run)

    def for_clips(self, run: Callable) -> Callable:
        """``run(clip, out, margin, optim, max_seconds, size)`` on a lent GPU for the seconds ``size`` needs."""
        return self.gpu(duration=self.clip_slot)(run)

    # Runs one call cannot do are refused before they ask (ZeroGPU would refuse them, or stop them midway).
    def check_photo(self, settings: RunSettings) -> None:
        work = self.photo_work(settings)
        if work > self.config.cap_s:
            raise FalcoError(f"This run needs about {work:.0f} s of GPU time, more than the {self.config.cap_s} s "
                             "one run may have on this Space: use fewer steps, faces or m values.")

    def check_clip(self, size: ClipSize) -> None:
        if clip_work_seconds(self.config, size) > self.config.cap_s:
            most = max_clip_frames(self.config, size.width, size.height, size.steps, size.margins)
            raise FalcoError(f"This clip has {size.frames} frames of {size.width}x{size.height}; one GPU run on "
                             f"this Space can do about {most} at that size. Trim it, or make it smaller, and try "
                             "again.")

    def clip_limit_text(self, steps: int) -> str:
        """What the Video tab says of the longest clip one call can do."""
        width, height = self.config.clip_reference_size
        frames = max_clip_frames(self.config, width, height, steps)
        return (f"On this ZeroGPU Space a clip runs in one GPU run of at most {self.config.cap_s} s, so it must be "
                f"short: about {frames} frames at {width}x{height} ({frames / 30:.1f} s at 30 frames per second, "
                f"{frames / 25:.1f} s at 25), fewer for larger frames or several persons.")
