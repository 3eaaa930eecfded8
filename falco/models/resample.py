"""One axis of F.interpolate / F.adaptive_avg_pool2d as a matrix.

A resize or pool of an image is ``rows @ x @ cols.T``: the same linear map, but its
backward pass is two matrix products, deterministic on CUDA, where the backward passes
of antialiased ``interpolate`` and of ``adaptive_avg_pool2d`` add with atomics.  The
model modules use these to give their preprocessing a matrix form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] float64: one axis of F.interpolate's bilinear resize (antialiased when shrinking)."""
    if n_in == n_out:
        return torch.eye(n_in, dtype=torch.float64)
    basis = torch.eye(n_in, dtype=torch.float64)[:, None, None, :]
    return F.interpolate(basis, size=(1, n_out), mode="bilinear", align_corners=False,
                         antialias=n_in > n_out)[:, 0, 0].T


def pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] float64: one axis of F.adaptive_avg_pool2d."""
    basis = torch.eye(n_in, dtype=torch.float64)[:, None, None, :]
    return F.adaptive_avg_pool2d(basis, (1, n_out))[:, 0, 0].T


def square_side(x: torch.Tensor) -> int:
    """S of square faces [B, 3, S, S]; anything else is refused."""
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"expected square aligned faces [B, 3, S, S], got {tuple(x.shape)}")
    return x.shape[-1]
