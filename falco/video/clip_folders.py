"""Clips on the command line: one clip, or every clip of a folder tree, beside falco.photo_folders's photos.

For IN/a/x.mp4 it writes OUT/a/x.mp4 (with several m, x.m0.5.mp4, one per m: the clip is tracked once and
each person optimised once for every m), x.mp4.latents.safetensors (each person track's offset and key-frame
codes, for the first m) and, last, x.mp4.json: the record (``source``, ``status``, ``outputs``, ``video``,
``tracks``: one entry per person track and m, ``params``, ``settings``, ``seconds``; or the ``error``).
Records, resuming, ``--retry-failed`` and accelerate's shares follow falco.photo_folders's rules.  This module loads
no network or codec until a clip is done: the command line imports it before it parses its arguments.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from falco import photo_folders
from falco.config import OptimConfig, VideoConfig
from falco.names import output_paths
from falco.output_files import save_json

if TYPE_CHECKING:
    from falco.pipeline import FalcoPipeline


def is_clip(path: Path, config: VideoConfig = VideoConfig()) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in config.extensions


def anonymize_clip(pipeline: FalcoPipeline, source: Path, relative: str, out_dir: Path, margins: Sequence[float],
                   optim: OptimConfig, fake_k: int, refine_steps: int, settings: dict | None = None,
                   progress: bool = True, config: VideoConfig = VideoConfig()) -> dict:
    """One clip, tracked once and each person optimised once for every m, a clip per m; then its latents and
    (last) its record; returns the record."""
    from falco.video.anonymize import VideoProgress, anonymize_video  # torch and PyAV: once there is a clip to do

    started = time.monotonic()
    clips, latents, record = output_paths(out_dir, relative, margins)
    record.parent.mkdir(parents=True, exist_ok=True)
    result = None
    try:
        with tqdm(total=None, unit="frame", desc=relative, disable=not progress) as bar:
            for event in anonymize_video(pipeline, source, clips, margins=margins, optim=optim, fake_k=fake_k,
                                         refine_steps=refine_steps, config=config):
                if isinstance(event, VideoProgress):
                    bar.set_description(f"{relative}: {event.stage}"
                                        + (f" person {event.track}/{event.tracks}" if event.track else ""))
                    bar.total, bar.n = event.total, event.done
                    bar.refresh()
                else:
                    result = event
        result.save_latents(latents)
    except BaseException:
        # The clips come all at once (every m's, or none); the latents failed after them (or Ctrl-C): no record
        # will list those clips, so they go too, as a photo's outputs are written only once every m is done.
        if result is not None:
            for clip in clips:
                clip.unlink(missing_ok=True)
        raise
    entry = {"source": relative, "status": "ok",
             "outputs": [p.relative_to(out_dir).as_posix() for p in (*clips, latents)],
             **result.record(), "settings": settings, "seconds": round(time.monotonic() - started, 3)}
    save_json(record, entry)
    return entry


def video_settings(margins: Sequence[float], optim: OptimConfig, fake_k: int, weights: str, refine_steps: int) -> dict:
    # missed_frames_covered: records from before frames with a missed detection were anonymized (they showed the
    # original face) lack it, so those clips are done again rather than skipped.
    return {**photo_folders.run_settings(margins, optim, fake_k, weights), "refine_steps": refine_steps,
            "missed_frames_covered": True}


def anonymize_clips(pipeline: FalcoPipeline, in_path: Path, out_dir: Path, margins: Sequence[float],
                    optim: OptimConfig, fake_k: int, shard: photo_folders.Shard = photo_folders.Shard(0, 1),
                    retry_failed: bool = False, progress: bool = True, refine_steps: int = 0,
                    config: VideoConfig = VideoConfig()) -> photo_folders.Summary:
    """``in_path``: one clip, or a folder tree's clips; this process does those of its ``shard`` (accelerate's rank:
    of several processes given one clip, one does it)."""
    in_path, out_dir = Path(in_path), Path(out_dir)
    settings = video_settings(margins, optim, fake_k, pipeline.source, refine_steps)
    if in_path.is_file():
        root, files = in_path.parent, [in_path.name] if shard.holds(in_path.name) else []
    else:
        root = in_path
        files = [f for f in photo_folders.list_images(in_path, config.extensions, exclude=out_dir.resolve())
                 if shard.holds(f)]
    summary = photo_folders.Summary(total=len(files))
    try:
        for relative in files:
            earlier = photo_folders.read_record(output_paths(out_dir, relative, margins)[2])
            if photo_folders.still_good(earlier, settings, retry_failed, summary, relative):
                continue
            # As a photo: one bad clip is recorded and the run goes on; a rerun with other m deletes x.m0.5.mp4.
            photo_folders.run_one(out_dir, relative, settings, earlier, summary, lambda: anonymize_clip(
                pipeline, root / relative, relative, out_dir, margins, optim, fake_k, refine_steps, settings,
                progress, config))
    except KeyboardInterrupt as stop:
        raise photo_folders.Interrupted(summary) from stop
    return summary
