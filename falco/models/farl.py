"""FaRL's image tower: CLIP ViT-B/16 with QuickGELU, built from open_clip's parts.

FaRL (Zheng et al., CVPR 2022) keeps CLIP's architecture and key layout, so the
official checkpoint's ``visual.*`` entries load into open_clip's VisionTransformer
as they are.  FaRL was trained with QuickGELU (``x * sigmoid(1.702 x)``); open_clip's
plain ``ViT-B-16`` config uses exact GELU and would silently change every feature.
Only the image tower is built: the text tower is never needed here.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, VisionTransformer

from falco.models import freeze
from falco.models.resample import resize_matrix, square_side

# FaRL normalises [0, 1] RGB with CLIP's statistics (FaRLVisualFeatures in FacePerceiver/FaRL).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FARL_INPUT_SIZE = 224   # the official ViT-B/16's 14x14 patches of 16 px


class FaRL(nn.Module):
    def __init__(self, image_size: int = FARL_INPUT_SIZE, patch_size: int = 16, width: int = 768,
                 layers: int = 12, heads: int = 12, embed_dim: int = 512):
        super().__init__()
        self.config = dict(image_size=image_size, patch_size=patch_size, width=width,
                           layers=layers, heads=heads, embed_dim=embed_dim)
        self.visual = VisionTransformer(image_size=image_size, patch_size=patch_size, width=width,
                                        layers=layers, heads=heads, mlp_ratio=4.0,
                                        output_dim=embed_dim, act_layer=QuickGELU)
        # Older open_clip runs the residual stack sequence-first and has no `batch_first`.
        self._batch_first = getattr(self.visual.transformer, "batch_first", False)
        freeze(self)
        self.eval()

    @property
    def num_tokens(self) -> int:
        return (self.config["image_size"] // self.config["patch_size"]) ** 2 + 1

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] normalised input -> [B, 1+grid², width] after the last block, before ln_post."""
        v = self.visual
        x = v.conv1(x).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        if self._batch_first:
            return v.transformer(x)
        return v.transformer(x.transpose(0, 1)).transpose(0, 1)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The 512-d image embedding from `tokens` (ln_post of the CLS token, times proj)."""
        return self.visual.ln_post(tokens[:, 0]) @ self.visual.proj

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(self.tokens(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


def farl_preprocess(x: torch.Tensor, size: int = FARL_INPUT_SIZE) -> torch.Tensor:
    """[B,3,H,W] RGB in [-1,1] -> [B,3,size,size] as FaRL expects. Differentiable.

    Centre-crops to a square, resizes bilinearly (antialiased, as torchvision's Resize
    in FALCO's attribute loss), then maps to [0,1] and applies CLIP's mean/std, which is
    what FaRL's own feature extractor does to its [0,1] input.
    """
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top:top + side, left:left + side]
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=side > size)
    return clip_normalise(x)


@torch.compiler.disable   # a cached lookup: compiled steps take the matrix as a graph input
@lru_cache(maxsize=8)
def farl_resize_matrix(side: int, size: int, device: str) -> torch.Tensor:
    """[size, side] float32 on ``device``: farl_preprocess's resize of one axis."""
    return resize_matrix(side, size).float().to(device)


@torch.compiler.disable
@lru_cache(maxsize=4)
def clip_statistics(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's mean and std [1, 3, 1, 1] on ``device``, made once (no host copy inside a CUDA graph)."""
    return (torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1))


def clip_normalise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] RGB -> [0, 1] -> CLIP's mean and std, in x's dtype."""
    mean, std = (t.to(x.dtype) for t in clip_statistics(str(x.device)))
    return ((x + 1) / 2 - mean) / std


def farl_preprocess_matrix(x: torch.Tensor, size: int = FARL_INPUT_SIZE) -> torch.Tensor:
    """farl_preprocess of square faces as matrix products: the same map, deterministic backward on CUDA."""
    resize = farl_resize_matrix(square_side(x), size, str(x.device))
    return clip_normalise(resize @ x @ resize.T)
