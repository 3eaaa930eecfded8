"""The networks of a weight set, loaded once and frozen: what the pipeline and the benchmarks run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from falco.models import NETWORKS, freeze, io
from falco.models.arcface import ArcFace
from falco.models.e4e import Encoder4Editing
from falco.models.farl import FaRL
from falco.models.stylegan2 import Generator


@dataclass(frozen=True)
class Networks:
    device: torch.device
    generator: Generator | None = None
    mean_w: torch.Tensor | None = None        # [D] the generator's mean w
    e4e: Encoder4Editing | None = None
    latent_avg: torch.Tensor | None = None    # [num_ws, D] added to e4e's codes
    arcface: ArcFace | None = None
    farl: FaRL | None = None


def load_networks(paths: Mapping[str, Path], device: torch.device, names: Sequence[str] = NETWORKS) -> Networks:
    """The networks named, from their files (``paths[name]``: falco.weights' fetched paths, or any mapping)."""
    loaded: dict = {"device": device}
    if "generator" in names:
        loaded["generator"], loaded["mean_w"] = io.load_generator(paths["generator"], device)
    if "e4e" in names:
        loaded["e4e"], loaded["latent_avg"] = io.load_e4e(paths["e4e"], device)
    if "arcface" in names:
        loaded["arcface"] = io.load_arcface(paths["arcface"], device)
    if "farl" in names:
        loaded["farl"] = io.load_farl(paths["farl"], device)
    for name in NETWORKS:
        if loaded.get(name) is not None:
            freeze(loaded[name]).eval()   # only latent codes are ever optimised
    return Networks(**loaded)
