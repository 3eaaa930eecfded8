"""Steps shared by publishing and preparing a set: dlib files into the Hub layout, the bank, the manifest."""

from __future__ import annotations

import bz2
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from falco.bank import build_bank
from falco.config import BankConfig
from falco.errors import WeightsError, first_line
from falco.models import io
from falco.output_files import write_atomic
from falco.weights.manifest import (
    ARTIFACTS,
    HASH_CHUNK,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    Build,
    Manifest,
    Origin,
    describe_folder,
)
from falco.weights.model_card import model_card


def copy_dlib_model(src: Path, dst: Path) -> None:
    # dlib distributes its models bz2-compressed; the Hub holds them ready to load.
    def write(tmp: Path) -> None:
        if src.suffix == ".bz2":
            with bz2.open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, HASH_CHUNK)
        else:
            shutil.copyfile(src, tmp)
    write_atomic(dst, write)


def check_dlib_model(name: str, path: Path) -> None:
    """WeightsError unless dlib loads ``path`` as the ``dlib_landmarks`` or ``dlib_recognition`` model."""
    import dlib
    load, what = {"dlib_landmarks": (dlib.shape_predictor, "a dlib shape predictor"),
                  "dlib_recognition": (dlib.face_recognition_model_v1, "a dlib face recognition model")}[name]
    try:
        load(str(path))
    except RuntimeError as err:
        raise WeightsError(f"{path.name} is not {what} ({first_line(err)}).") from err


def build_bank_from_folder(folder: Path, n: int, device: str, config: BankConfig | None = None,
                           rows_done: Callable[[int], None] | None = None) -> None:
    """The fake bank of the generator and FaRL converted into ``folder`` (resumable: see falco.bank.build_bank)."""
    generator, mean_w = io.load_generator(folder / ARTIFACTS["generator"], device)
    farl = io.load_farl(folder / ARTIFACTS["farl"], device)
    build_bank(folder / ARTIFACTS["fake_bank"], n, generator, mean_w, farl, config or BankConfig(),
               progress=rows_done is None, rows_done=rows_done)


def write_manifest(folder: Path, repo_id: str | None, note: str, sources: Mapping[str, Origin] | None = None,
                   built: Build | None = None) -> Manifest:
    """Hash every artifact of ``folder``; the model card, then the manifest, are written (the manifest last:
    a folder with one is complete).  ``sources``: the origin of each official file, ``built``: what built the
    set, where known; both go into the manifest and the card."""
    manifest = replace(describe_folder(folder, repo_id, note=note), sources=dict(sources or {}), built=built)
    (folder / MODEL_CARD_NAME).write_text(model_card(manifest))
    manifest.write(folder / MANIFEST_NAME)
    return manifest
