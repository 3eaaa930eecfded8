"""ArcFace IR-SE50 identity embedding, layout of `model_ir_se50.pth` (bare state dict)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from falco.models import freeze
from falco.models.irse import DOWNSAMPLING, IRSE50_UNITS, IRSE50_WIDTHS, make_body, make_input_layer
from falco.models.resample import pool_matrix, resize_matrix, square_side

# FALCO's identity loss (after pSp/e4e): the aligned face at 256x256, this crop keeps the
# face interior the recogniser was trained on, then pooled to the backbone's input size.
ID_RESIZE = 256
ID_CROP_ROWS = (35, 223)
ID_CROP_COLS = (32, 220)
ID_INPUT_SIZE = 112


def identity_preprocess(x: torch.Tensor) -> torch.Tensor:
    """Aligned faces [B,3,S,S] in [-1,1], any S -> ArcFace input [B,3,112,112]. Differentiable.

    The resize matches FALCO's torchvision `Resize(256, antialias=True)` on tensors:
    antialiased bilinear, so a 1024 face is averaged down instead of aliased.
    """
    square_side(x)
    x = F.interpolate(x, size=(ID_RESIZE, ID_RESIZE), mode="bilinear", align_corners=False, antialias=True)
    x = x[:, :, ID_CROP_ROWS[0]:ID_CROP_ROWS[1], ID_CROP_COLS[0]:ID_CROP_COLS[1]]
    return F.adaptive_avg_pool2d(x, ID_INPUT_SIZE)


@torch.compiler.disable   # a cached lookup: compiled steps take the matrices as graph inputs
@lru_cache(maxsize=8)
def identity_matrices(size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) [112, size] float32 on ``device``: identity_preprocess's resize, crop and pool per axis."""
    resize = resize_matrix(size, ID_RESIZE)
    rows = pool_matrix(ID_CROP_ROWS[1] - ID_CROP_ROWS[0], ID_INPUT_SIZE) @ resize[slice(*ID_CROP_ROWS)]
    cols = pool_matrix(ID_CROP_COLS[1] - ID_CROP_COLS[0], ID_INPUT_SIZE) @ resize[slice(*ID_CROP_COLS)]
    return rows.float().to(device), cols.float().to(device)


def identity_preprocess_matrix(x: torch.Tensor) -> torch.Tensor:
    """identity_preprocess as matrix products: the same linear map, deterministic backward on CUDA."""
    rows, cols = identity_matrices(square_side(x), str(x.device))
    return rows @ x @ cols.T


class ArcFace(nn.Module):
    def __init__(self, widths: Sequence[int] = IRSE50_WIDTHS, units: Sequence[int] = IRSE50_UNITS,
                 input_size: int = ID_INPUT_SIZE, embedding_dim: int = 512):
        super().__init__()
        if input_size % DOWNSAMPLING:
            raise ValueError(f"input_size must be a multiple of {DOWNSAMPLING}, got {input_size}")
        self.config = dict(widths=list(widths), units=list(units), input_size=input_size,
                           embedding_dim=embedding_dim)
        self.input_size = input_size
        self.input_layer = make_input_layer(widths[0])
        self.body = make_body(widths, units)
        side = input_size // DOWNSAMPLING
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(widths[-1]),
            nn.Identity(),  # the checkpoint's Dropout slot: inference only, keeps the indices
            nn.Flatten(),
            nn.Linear(widths[-1] * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )
        freeze(self).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,112,112] in [-1,1] (see identity_preprocess) -> unit-norm embeddings [B,512], float32."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"ArcFace expects {self.input_size}x{self.input_size} input, got {tuple(x.shape)}")
        x = self.output_layer(self.body(self.input_layer(x)))
        # Cosine similarities of these drive the identity loss: normalise in float32 under autocast.
        x = x.float()
        return x / x.norm(dim=1, keepdim=True)
