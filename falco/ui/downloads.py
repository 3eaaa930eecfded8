"""A run's files for the visitor to download: the photos, every face image, the W+ codes and the record."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from falco.names import LATENTS_NAME, RECORD_NAME, ZIP_NAME, photo_name
from falco.output_files import save_image, save_json, write_atomic
from falco.results import AnonymizationResult
from falco.ui.render import face_files


def run_record(result: AnonymizationResult) -> dict[str, Any]:
    """Parameters and per-face outcome of a run, for the JSON download and the API."""
    return {"params": result.params, "faces": result.face_records()}


def write_downloads(result: AnonymizationResult, record: dict[str, Any], folder: Path) -> list[str]:
    """The images, the W+ codes and the JSON record of a run, as files in ``folder``, and all of them in one zip
    (last: the page shows the first file, the photo at the first m, as its result)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for margin, photo in zip(result.margins, result.photos, strict=True):
        paths.append(save_image(photo, folder / photo_name(margin)))
    for r in result.faces:
        for name, image in face_files(r).items():
            if folder / name not in paths:
                paths.append(save_image(image, folder / name))
    codes = result.save_latents(folder / LATENTS_NAME)
    params = save_json(folder / RECORD_NAME, record)
    files = [*paths, codes, params]
    return [str(p) for p in [*files, write_zip(folder / ZIP_NAME, files)]]


def write_zip(path: Path, files: list[Path]) -> Path:
    """Every file of a run in one download (PNGs and safetensors are compressed already: stored as they are)."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as bundle:
            for file in files:
                bundle.write(file, arcname=file.name)
    return write_atomic(path, write)
