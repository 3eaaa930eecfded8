"""What the model tests share: layouts as the reference files write them, seeded networks, the golden tolerance.

The golden outputs of the reference implementations (tests/fixtures/golden, made with the seeding rule of
falco.models.random_weights) are compared with one rule, README's: |ours - golden| <= rel * max|golden| + floor.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from falco.models.random_weights import seeded_state_dict


def dtype_shape(t: torch.Tensor) -> str:
    """A tensor as the layout files of tests/fixtures/checkpoints write it: ``float32[512,3,3]``."""
    return f"{str(t.dtype).removeprefix('torch.')}[{','.join(map(str, t.shape))}]"


def layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    return {k: dtype_shape(v) for k, v in state_dict.items()}


def seeded(model: nn.Module, prefix: str = "") -> nn.Module:
    """The model with the reference seeding rule's weights (keys as the official checkpoint names them, after
    ``prefix``), in eval mode.  A model built on the meta device gets them assigned, without the seconds of a
    default initialisation."""
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(seeded_state_dict(model.state_dict(), prefix=prefix), strict=True, assign=on_meta)
    return model.eval()


def seeded_on_meta(cls: type[nn.Module], prefix: str = "", **config) -> nn.Module:
    """``cls(**config)`` built on the meta device, then seeded."""
    with torch.device("meta"):
        model = cls(**config)
    return seeded(model, prefix)


def assert_golden(ours: torch.Tensor, golden: torch.Tensor, rel: float = 1e-3, floor: float = 1e-6) -> None:
    """README's tolerance: |ours - golden| <= rel * max|golden| + floor."""
    assert ours.shape == golden.shape, (ours.shape, golden.shape)
    err, scale = (ours - golden).abs().max().item(), golden.abs().max().item()
    assert err <= rel * scale + floor, f"max error {err:.3g} vs max |golden| {scale:.3g}"
