"""FALCO's loss: lambda_id * |cos(ArcFace(x_anon), ArcFace(x_real)) - m| + lambda_attr * sum of FaRL token L1.

Both the anonymized image and the real face go through the same preprocessing ([-1, 1] in,
resized and normalised as the model modules do); the real face's features are computed once.
With ``deterministic`` the resampling runs as matrix products (the same linear maps), whose
backward on CUDA adds without atomics (falco.optimize says why that matters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from falco.config import OptimConfig
from falco.models.arcface import identity_preprocess, identity_preprocess_matrix
from falco.models.farl import farl_preprocess, farl_preprocess_matrix


@dataclass(frozen=True)
class RealFeatures:
    identity: torch.Tensor   # [B, 512] ArcFace embedding, L2-normalised
    tokens: torch.Tensor     # [B, 197, 768] FaRL tokens before ln_post

    def select(self, index: torch.Tensor | slice) -> RealFeatures:
        """Rows for each batch item (faces x margins share their face's features)."""
        return RealFeatures(self.identity[index], self.tokens[index])


@dataclass(frozen=True)
class LossTerms:
    identity_cosine: torch.Tensor   # [B] cos(ArcFace(anon), ArcFace(real))
    identity: torch.Tensor          # [B] |cos - m|
    attribute: torch.Tensor         # [B] sum over tokens of the mean L1 difference
    total: torch.Tensor             # [B] lambda_id * identity + lambda_attr * attribute

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> LossTerms:
        return LossTerms(*(fn(t) for t in (self.identity_cosine, self.identity, self.attribute, self.total)))

    def detach(self) -> LossTerms:
        return self.map(torch.Tensor.detach)

    @staticmethod
    def cat(parts: list[LossTerms]) -> LossTerms:
        """The terms of consecutive batch items, joined."""
        return LossTerms(*(torch.cat(field) for field in zip(*(vars(part).values() for part in parts))))

    def as_lists(self) -> dict[str, list[float]]:
        return {"identity": self.identity.tolist(), "attribute": self.attribute.tolist(),
                "total": self.total.tolist()}


class FalcoLoss(nn.Module):
    def __init__(self, arcface: nn.Module, farl: nn.Module, lambda_id: float, lambda_attr: float,
                 deterministic: bool = True):
        super().__init__()
        self.arcface, self.farl = arcface, farl
        self.lambda_id, self.lambda_attr = lambda_id, lambda_attr
        # The matrix forms: the same maps as the model modules' functions, deterministic backward on CUDA.
        self.identity_preprocess = identity_preprocess_matrix if deterministic else identity_preprocess
        self.farl_preprocess = farl_preprocess_matrix if deterministic else farl_preprocess

    @classmethod
    def for_config(cls, arcface: nn.Module, farl: nn.Module, config: OptimConfig) -> FalcoLoss:
        return cls(arcface, farl, config.lambda_id, config.lambda_attr, config.deterministic)

    def identity_embedding(self, images: torch.Tensor) -> torch.Tensor:
        x = self.identity_preprocess(images)
        if images.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)   # ArcFace's convolutions follow the layout
        return self.arcface(x)

    def attribute_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.farl.tokens(self.farl_preprocess(images, self.farl.config["image_size"]))

    @torch.no_grad()
    def real_features(self, images: torch.Tensor) -> RealFeatures:
        return RealFeatures(self.identity_embedding(images), self.attribute_tokens(images))

    def forward(self, images: torch.Tensor, real: RealFeatures, margins: torch.Tensor) -> LossTerms:
        cosine = (self.identity_embedding(images) * real.identity).sum(dim=-1)
        identity = (cosine - margins).abs()
        attribute = (self.attribute_tokens(images) - real.tokens).abs().mean(dim=-1).sum(dim=-1)
        return LossTerms(cosine, identity, attribute, self.lambda_id * identity + self.lambda_attr * attribute)
