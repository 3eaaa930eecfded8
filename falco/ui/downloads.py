"""A run's files for the visitor to download: the photos, every face image, the W+ codes and the record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from falco.files import save_image, write_atomic
from falco.results import AnonymizationResult
from falco.ui.render import face_files


def run_record(result: AnonymizationResult) -> dict[str, Any]:
    """Parameters and per-face outcome of a run, for the JSON download and the API."""
    return {"params": result.params, "faces": result.face_records()}


def write_downloads(result: AnonymizationResult, record: dict[str, Any], folder: Path) -> list[str]:
    """The images, the W+ codes and the JSON record of a run, as files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for margin, photo in zip(result.margins, result.photos, strict=True):
        paths.append(save_image(photo, folder / f"photo_m{margin:g}.png"))
    for r in result.faces:
        for name, image in face_files(r).items():
            if folder / name not in paths:
                paths.append(save_image(image, folder / name))
    codes = result.save_latents(folder / "wplus.safetensors")
    params = write_atomic(folder / "run.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return [str(p) for p in [*paths, codes, params]]
