"""Deterministic random weights with the statistics of real ones.

This is the rule the reference golden outputs were computed with (salt
``shared-v1``); the tiny and full-size random weight sets reuse it so that any
state_dict layout can be filled reproducibly without the real checkpoints.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import torch

from falco.models.arcface import ArcFace
from falco.models.e4e import Encoder4Editing
from falco.models.farl import FaRL
from falco.models.stylegan2 import Generator

REFERENCE_SALT = "shared-v1"

# Small but complete architectures, the one definition of "tiny" for random sets and tests: the whole
# pipeline runs on them in seconds on a CPU.
TINY_CONFIGS: dict[str, dict] = {
    "generator": dict(size=64, style_dim=64, n_mlp=2, channels={4: 64, 8: 64, 16: 32, 32: 32, 64: 16}),
    "e4e": dict(n_styles=10, style_dim=64, widths=[16, 16, 32, 32], units=[1, 1, 1, 1]),
    "arcface": dict(widths=[16, 16, 32, 32], units=[1, 1, 1, 1]),
    "farl": dict(patch_size=32, width=64, layers=2, heads=2),
}
# Key prefixes of the official checkpoints, so random weights follow the reference seeding rule.
OFFICIAL_PREFIX = {"generator": "g_ema.", "e4e": "encoder.", "arcface": "", "farl": ""}
NETWORK_CLASSES = {"generator": Generator, "e4e": Encoder4Editing, "arcface": ArcFace, "farl": FaRL}


def seeded_tensor(full_key: str, shape: tuple[int, ...], dtype: torch.dtype,
                  salt: str = REFERENCE_SALT) -> torch.Tensor:
    shape = tuple(shape)
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if shape == ():
        return torch.tensor(math.log(1 / 0.07), dtype=torch.float32)
    seed = zlib.crc32(f"{salt}:{full_key}".encode())
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    last = full_key.rsplit(".", 1)[-1]
    if "noise" in full_key:
        return t
    if t.ndim == 1:
        if last == "running_var":
            return 1 + 0.1 * t.abs()
        if last == "weight":
            return 1 + 0.1 * t
        return 0.1 * t
    return t / math.sqrt(math.prod(shape[1:]))


def seeded_state_dict(layout: Mapping[str, torch.Tensor], prefix: str = "",
                      salt: str = REFERENCE_SALT) -> dict[str, torch.Tensor]:
    """Fill every key of ``layout`` (a state_dict, or anything with .shape/.dtype values).

    ``prefix`` is prepended to each key when seeding (e.g. ``"g_ema."``) but not in
    the returned dict, so the result loads into the module the layout came from.
    """
    return {k: seeded_tensor(prefix + k, tuple(v.shape), v.dtype, salt) for k, v in layout.items()}


def random_network(name: str, tiny: bool = False) -> torch.nn.Module:
    """One of the networks with the reference seeding rule, on the CPU; built on the meta device, so no
    throwaway initialisation is computed (seconds at full size)."""
    with torch.device("meta"):
        model = NETWORK_CLASSES[name](**(TINY_CONFIGS[name] if tiny else {}))
    seeded = seeded_state_dict(model.state_dict(), prefix=OFFICIAL_PREFIX[name])
    model.load_state_dict(seeded, strict=True, assign=True)
    return model
