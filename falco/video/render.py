"""Every frame of a clip rendered with its persons' new identities: one decode, one clip per m.

Per frame and face: align (at the landmarks the caller gives) -> e4e -> + the person's offset at each m
-> generator -> pasted back into that m's frame.  Faces go through the networks in batches while a
thread decodes and aligns the next frames and another pastes and encodes the finished ones.  The
alignment and e4e run once per face whatever the number of m; the generator runs once per face and m,
in passes of the same shape as a run at one m, so each m's clip is the clip a run at that m alone gives.
The webcam (falco.video.live) renders its frames one at a time through the same FrameRenderer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from falco import allocator
from falco.config import OptimConfig, VideoConfig
from falco.device import render_batch
from falco.faces import AlignedFace, align_face, paste_into
from falco.pipeline import FalcoPipeline
from falco.pixels import to_pixels
from falco.results import FaceResult
from falco.video.io import Frame, VideoInfo, VideoWriter, read_frames


@dataclass(frozen=True)
class Identity:
    """What rendering needs of a person at one m: the offset added to each frame's inversion, and the key frame's
    result (its m and fake, which a refinement optimises against)."""
    offset: torch.Tensor               # [num_ws, D], zero outside the trained rows
    face: FaceResult


@dataclass
class _Item:
    """One face of one frame on its way through the networks."""
    person: int                        # index into the renderer's persons
    aligned: AlignedFace
    anonymized: list[Image.Image] = field(default_factory=list)   # one per m


@dataclass
class RenderFrame:
    """A frame, aligned: its pixels, the photo they make, and its faces."""
    frame: Frame
    photo: Image.Image
    items: list[_Item]


class FrameRenderer:
    """Frames in, frames with every person anonymized out, one per m: e4e + offset + generator, in batches.

    ``identities``: margins x persons, m-major (person p at the j-th m is ``identities[j * persons + p]``)."""

    def __init__(self, pipeline: FalcoPipeline, identities: Sequence[Identity], margins: Sequence[float],
                 optim: OptimConfig, config: VideoConfig, refine_steps: int = 0):
        if len(identities) % max(len(margins), 1):
            raise ValueError(f"{len(identities)} identities for {len(margins)} m values: expected persons x m")
        self.pipeline, self.optim, self.config, self.refine_steps = pipeline, optim, config, refine_steps
        self.margins = tuple(margins)
        self.persons = len(identities) // max(len(margins), 1)
        device = pipeline.device
        self.offsets = (torch.stack([i.offset for i in identities]).to(device).unflatten(0, (len(margins), -1))
                        if identities else None)   # [margins, persons, num_ws, D]
        # A person's fake is the same at every m (one draw per person).
        self.fake_w = pipeline.fake_w([i.face.fake_index for i in identities[:self.persons]]) if identities else None
        self.loss = pipeline.loss(optim) if refine_steps else None

    def align(self, frame: Frame, landmarks: Mapping[int, np.ndarray], photo: Image.Image | None = None,
              ) -> RenderFrame:
        """The frame's faces aligned: ``landmarks`` maps a person (index into ``persons``) seen in this frame to
        their landmarks here.  ``photo``: the frame's pixels as an image, where the caller has it already."""
        photo = Image.fromarray(frame.pixels, "RGB") if photo is None else photo
        size = self.config.align_size or self.pipeline.inversion_size
        items = [_Item(person, align_face(photo, points, size, config=self.pipeline.face_config))
                 for person, points in sorted(landmarks.items())]
        return RenderFrame(frame, photo, items)

    @torch.no_grad()
    def codes(self, inversion: torch.Tensor, persons: list[int]) -> torch.Tensor:
        """Each face's W+ at each m [margins, faces, num_ws, D]: its inversion plus its person's offset at that m
        (rows 3..7 only)."""
        return inversion[None] + self.offsets[:, persons]

    def render(self, items: list[_Item]) -> None:
        """Fills each item's ``anonymized``, one image per m."""
        if not items:
            return
        crops = [item.aligned.image for item in items]
        persons = [item.person for item in items]
        for j, wplus in enumerate(self.codes(self.pipeline.invert(crops), persons)):
            if self.refine_steps:
                margins = torch.full((len(items),), self.margins[j], device=self.pipeline.device)
                wplus = self.pipeline.refine(crops, wplus, self.fake_w[persons], margins,
                                             replace(self.optim, steps=self.refine_steps, cuda_graph=False), self.loss)
            for item, pixels in zip(items, to_pixels(self.pipeline.render(wplus))):
                item.anonymized.append(Image.fromarray(pixels, "RGB"))

    def paste(self, aligned: RenderFrame) -> list[np.ndarray]:
        """The frame at each m, its faces pasted back (the frame's own pixels where it has none)."""
        if not aligned.items:
            return [aligned.frame.pixels] * len(self.margins)
        return [paste_into(np.array(aligned.frame.pixels),   # a copy: the frame serves every m
                           [(item.aligned, item.anonymized[j]) for item in aligned.items], self.pipeline.face_config)
                for j in range(len(self.margins))]


class ClipWriters:
    """One VideoWriter per m, all or none: a failure (or a stop) before every clip is in place leaves none."""

    def __init__(self, paths: Sequence[Path], source: VideoInfo, codec: str | None, config: VideoConfig):
        self.writers: list[VideoWriter] = []
        try:
            for path in paths:
                self.writers.append(VideoWriter(path, source, codec, config))   # one that fails cleans up itself
        except BaseException:
            for writer in self.writers:
                writer.abort()
            raise

    def write(self, pts: int | None, frames: Sequence[np.ndarray]) -> None:
        for writer, pixels in zip(self.writers, frames):
            writer.write(pts, pixels)

    def __enter__(self) -> ClipWriters:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            for writer in self.writers:
                writer.abort()
            return
        done: list[Path] = []
        try:
            for writer in self.writers:
                done.append(writer.close())   # one that fails aborts itself
        except BaseException:
            for writer in self.writers[len(done) + 1:]:
                writer.abort()
            for path in done:   # in place already: no record could list it without the others
                path.unlink(missing_ok=True)
            raise


def _read_ahead(frames: Iterator, work: Callable, depth: int) -> Iterator:
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


def render_frames(renderer: FrameRenderer, source: VideoInfo, landmarks: Sequence[Mapping[int, np.ndarray]],
                  writers: ClipWriters, config: VideoConfig) -> Iterator[int]:
    """Every frame through the renderer into the writers (one per m); the number of frames done after each batch.
    ``landmarks``: per person (the renderer's order), their landmarks per frame index."""
    done = 0
    per_pass = config.batch_frames or render_batch(renderer.pipeline.device)

    def align(frame: Frame) -> RenderFrame:
        return renderer.align(frame, {p: points[frame.index] for p, points in enumerate(landmarks)
                                      if frame.index in points})

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="falco-encode") as encoder:
        writing: deque[Future] = deque()

        def flush(batch: list[RenderFrame]) -> None:
            renderer.render([item for aligned in batch for item in aligned.items])
            for aligned in batch:   # one worker: frames are encoded in order
                writing.append(encoder.submit(
                    lambda a=aligned: writers.write(a.frame.pts, renderer.paste(a))))
            while len(writing) > config.queue_frames:
                writing.popleft().result()

        batch, faces = [], 0
        frames = read_frames(source.path)
        with allocator.reusing(), closing(frames):   # each frame reuses the last one's memory
            for aligned in _read_ahead(frames, align, config.queue_frames):
                batch.append(aligned)
                faces += len(aligned.items)
                if faces >= per_pass or len(batch) >= config.queue_frames:
                    flush(batch)
                    done += len(batch)
                    batch, faces = [], 0
                    yield done
            if batch:
                flush(batch)
                done += len(batch)
        while writing:
            writing.popleft().result()
    yield done
