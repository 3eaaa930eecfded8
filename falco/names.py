"""The names of a run's output files, spelled once: the app's downloads and the command line's files beside
each input.  Both spell m as Python's ``:g`` does (``m0``, ``m0.5``), so a name says which m made the file.

    app, one folder per run      photo_m0.5.png; face1_aligned.png, face1_inversion.png, face1_fake.png,
                                 face1_m0.5_anonymized.png; wplus.safetensors; run.json; falco_results.zip
    command line, for IN/a/x.jpg OUT/a/x.jpg (several m: x.m0.5.jpg, one per m); x.jpg.latents.safetensors;
                                 x.jpg.json (the record)

Faces are numbered from 1 in detection order, as the page labels them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# The app's downloads besides the images: the W+ codes, the record, and every file in one zip.
LATENTS_NAME = "wplus.safetensors"
RECORD_NAME = "run.json"
ZIP_NAME = "falco_results.zip"
FACE_IMAGES = ("aligned", "inversion", "fake")   # a face's images that are the same at every m


def margin_tag(margin: float) -> str:
    return f"m{margin:g}"


def photo_name(margin: float) -> str:
    """The anonymized photo at ``margin``."""
    return f"photo_{margin_tag(margin)}.png"


def face_name(number: int, image: str) -> str:
    """Face ``number``'s ``image``, one of FACE_IMAGES."""
    if image not in FACE_IMAGES:
        raise ValueError(f"{image!r} is not one of {FACE_IMAGES}")
    return f"face{number}_{image}.png"


def anonymized_face_name(number: int, margin: float) -> str:
    return f"face{number}_{margin_tag(margin)}_anonymized.png"


def output_paths(out_dir: Path, relative: str, margins: Sequence[float]) -> tuple[list[Path], Path, Path]:
    """(images, latents, record) of the command line for one input: with one m the image keeps the input's
    name; with several, each carries its m before the suffix."""
    target = out_dir / relative
    if len(margins) == 1:
        images = [target]
    else:
        images = [target.with_name(f"{target.stem}.{margin_tag(m)}{target.suffix}") for m in margins]
    return images, target.with_name(target.name + ".latents.safetensors"), target.with_name(target.name + ".json")
