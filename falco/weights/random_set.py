"""Random-noise weight sets in the exact Hub layout, for tests and offline smoke runs.

Networks get the reference seeding rule (falco.models.random_weights); the dlib files are
the real ones from the ``face_recognition_models`` package (dlib has no architecture to
randomise).  Outputs of such a set are noise.  The evaluation's judges are not part of a
weight set: their random files are made by the evaluation itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch

from falco import __version__
from falco.bank import build_bank
from falco.config import BankConfig
from falco.models import io
from falco.models.random_weights import random_network
from falco.weights.hub import check_names
from falco.weights.manifest import (
    ARTIFACTS,
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    NETWORKS,
    RANDOM_BUILD,
    Build,
    Manifest,
    describe_folder,
)
from falco.weights.model_card import model_card
from falco.weights.official import installed_file

RANDOM_BANK_SIZE = {True: 32, False: 8}   # tiny, full size


def make_random_weights(out_dir: str | Path, tiny: bool, names: Iterable[str] | None = None,
                        bank_size: int | None = None, progress: bool = False) -> Manifest:
    """A complete set of random-noise weights in Hub layout (with manifest and model card).

    Networks get the reference seeding rule (deterministic, realistic statistics), the
    generator's mean w is measured from its own mapping, the bank is built with the
    random generator and FaRL, and the dlib files are the real ones from the
    ``face_recognition_models`` package (dlib has no architecture to randomise).
    """
    names = check_names(names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    needed = set(names) & set(NETWORKS)
    if "e4e" in names or "fake_bank" in names:
        needed.add("generator")   # e4e's latent_avg is the generator's mean w; the bank renders with it
    if "fake_bank" in names:
        needed.add("farl")
    models = {name: random_network(name, tiny) for name in sorted(needed)}
    mean_w = io.estimate_mean_w(models["generator"]) if "generator" in models else None
    with torch.no_grad():
        if "generator" in names:
            io.save_network(out / ARTIFACTS["generator"], "generator", models["generator"], {"latent_avg": mean_w})
        if "e4e" in names:
            rows = models["e4e"].config["n_styles"]
            io.save_network(out / ARTIFACTS["e4e"], "e4e", models["e4e"],
                            {"latent_avg": mean_w.expand(rows, -1)})
        for name in ("arcface", "farl"):
            if name in names:
                io.save_network(out / ARTIFACTS[name], name, models[name])
    for name in ("dlib_landmarks", "dlib_recognition"):
        if name in names:
            shutil.copyfile(packaged_dlib_model(ARTIFACTS[name]), out / ARTIFACTS[name])
    if "fake_bank" in names:
        n = bank_size or RANDOM_BANK_SIZE[tiny]
        build_bank(out / ARTIFACTS["fake_bank"], n, models["generator"], mean_w, models["farl"],
                   BankConfig(size=n, chunk_rows=n), progress=progress)
    bank_rows = (bank_size or RANDOM_BANK_SIZE[tiny]) if "fake_bank" in names else None
    built = Build(RANDOM_BUILD, __version__, "cpu" if bank_rows else None, bank_rows)
    size = "tiny" if tiny else "full-size"
    note = f"RANDOM NOISE weights ({size}) for tests and offline smoke runs; outputs are noise."
    manifest = replace(describe_folder(out, None, names, note=note), built=built)
    manifest.write(out / MANIFEST_NAME)
    (out / MODEL_CARD_NAME).write_text(model_card(manifest, random_set=True, tiny=tiny))
    return manifest


def packaged_dlib_model(filename: str) -> Path:
    """One of dlib's real models, as the face_recognition_models package (a requirement) ships it."""
    return installed_file("face_recognition_models", f"models/{filename}")
