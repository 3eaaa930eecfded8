"""What a clip evaluation compares: one original clip and its anonymized clips (one per m), with their m.

    clips = load_clip_set("clip.mp4", ["anonymized/"])                   # falco anonymize's output folder
    clips = load_clip_set("clip.mp4", ["out/clip.m0.mp4", "out/clip.m0.5.mp4"])
    clips = load_clip_set("clip.mp4", ["a.mp4", "b.mp4"], margins=[0.0, 0.5])

An anonymized clip's m comes from ``margins`` when given, else from the record written beside it (the command
line's ``clip.mp4.json``, whose ``outputs`` are in the order of ``params.margins``; the app's
``anonymized.json``), else from its name (``clip.m0.5.mp4``), else it is unknown (None).  Every clip is
probed first: a clip that is not the original's anonymized version (other frame count or size) is a FalcoError
before any work.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from falco.config import VideoConfig
from falco.errors import FalcoError
from falco.photo_folders import read_record
from falco.video.io import VideoInfo, probe_video

MARGIN_IN_NAME = re.compile(r"\.m(\d+(?:\.\d*)?(?:e-?\d+)?)$")   # names.margin_tag's spelling: clip.m0.5.mp4


@dataclass(frozen=True)
class AnonymizedClip:
    info: VideoInfo
    margin: float | None               # None: nothing says which m made it

    @property
    def name(self) -> str:
        return self.info.path.name


@dataclass(frozen=True)
class ClipSet:
    original: VideoInfo
    anonymized: list[AnonymizedClip]


def load_clip_set(original: str | Path, anonymized: Sequence[str | Path], margins: Sequence[float] | None = None,
                  config: VideoConfig = VideoConfig()) -> ClipSet:
    """The original and its anonymized clips, probed and checked.  ``anonymized``: clips, or the command line's
    output folder (its record of the original's name lists the clips)."""
    source = probe_video(original, config)
    paths = [clip for entry in anonymized for clip in _clips_of(Path(entry), source.path)]
    if margins is not None and len(margins) != len(paths):
        raise FalcoError(f"{len(margins)} value(s) of m for {len(paths)} anonymized clip(s): give one per clip.")
    if len({p.resolve() for p in paths}) != len(paths):
        raise FalcoError("An anonymized clip is named twice.")
    if source.path.resolve() in {p.resolve() for p in paths}:
        raise FalcoError(f"{source.path.name} is the original itself, not an anonymized clip.")
    clips = []
    for i, path in enumerate(paths):
        info = probe_video(path, config)
        if (info.frames, info.width, info.height) != (source.frames, source.width, source.height):
            raise FalcoError(f"{path.name} has {info.frames} frames of {info.width}x{info.height}, the original "
                             f"{source.frames} of {source.width}x{source.height}: it is not its anonymized version.")
        clips.append(AnonymizedClip(info, margins[i] if margins is not None else margin_of(path)))
    return ClipSet(source, clips)


def _clips_of(entry: Path, original: Path) -> list[Path]:
    """``entry`` itself, or the clips that the command line's record in folder ``entry`` lists for ``original``."""
    if not entry.is_dir():
        return [entry]
    record = read_record(entry / (original.name + ".json"))
    if record is None:
        raise FalcoError(f"{entry} holds no record {original.name}.json: give the anonymized clips themselves.")
    if record.get("status") != "ok":
        raise FalcoError(f"{original.name} failed in {entry}: {record.get('error', 'no anonymized clip')}.")
    margins = record.get("params", {}).get("margins", [])
    return [entry / Path(name).name for name in record.get("outputs", [])[:len(margins)]]   # beside the record


def margin_of(path: Path) -> float | None:
    """The m of an anonymized clip: from the record beside it (the command line's or the app's), else its name."""
    stem = MARGIN_IN_NAME.sub("", path.stem)
    for record_path in (path.with_name(path.name + ".json"), path.with_name(stem + path.suffix + ".json"),
                        path.with_suffix(".json")):
        record = read_record(record_path)
        margins = (record or {}).get("params", {}).get("margins")
        if not isinstance(margins, list) or not margins:
            continue
        outputs = [Path(name).name for name in record.get("outputs", [])]
        if path.name in outputs and outputs.index(path.name) < len(margins):
            return float(margins[outputs.index(path.name)])
        if len(margins) == 1:   # the app's record lists no outputs: one clip, one m
            return float(margins[0])
    found = MARGIN_IN_NAME.search(path.stem)
    return float(found.group(1)) if found else None
