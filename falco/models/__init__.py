"""Pretrained networks in pure PyTorch, layout-compatible with the official checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:   # the network list is read by the torch-free manifest tools too
    import torch.nn as nn

# The networks of a weight set, each one artifact (falco.weights) and one loader (falco.models.io).
NETWORKS = ("generator", "e4e", "arcface", "farl")


def freeze(module: nn.Module) -> nn.Module:
    """Only latent codes are ever optimised: every network parameter is frozen."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module
