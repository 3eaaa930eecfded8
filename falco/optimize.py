"""FALCO's loss and the latent optimisation loop.

A batch holds B items (faces x margins).  Each item optimises its own copy of W+ rows
[start, stop) (3..7 by default), starting from its fake's w; every other row stays the
real face's inversion.  The loss of an item only depends on that item's latents, and
the batch loss is the sum of the item losses, so with Adam (elementwise) a batch takes
the same steps as B separate runs.

Both the anonymized image and the real face go through the same preprocessing ([-1, 1]
in, resized and normalised by the model modules), and the real face's features are
computed once, before the loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from falco.config import OptimConfig
from falco.models.arcface import identity_preprocess
from falco.models.farl import farl_preprocess

# The losses only look at 256 (ArcFace) and 224 (FaRL) pixels.
LOSS_RESOLUTION = 256


@dataclass(frozen=True)
class RealFeatures:
    identity: torch.Tensor   # [B, 512] ArcFace embedding, L2-normalised
    tokens: torch.Tensor     # [B, 197, 768] FaRL tokens before ln_post

    def select(self, index: torch.Tensor) -> RealFeatures:
        """Rows for each batch item (faces x margins share their face's features)."""
        return RealFeatures(self.identity[index], self.tokens[index])


@dataclass(frozen=True)
class LossTerms:
    identity_cosine: torch.Tensor   # [B] cos(ArcFace(anon), ArcFace(real))
    identity: torch.Tensor          # [B] |cos - m|
    attribute: torch.Tensor         # [B] sum over tokens of the mean L1 difference
    total: torch.Tensor             # [B] lambda_id * identity + lambda_attr * attribute

    def detach(self) -> LossTerms:
        return LossTerms(*(t.detach() for t in (self.identity_cosine, self.identity, self.attribute, self.total)))

    def as_lists(self) -> dict[str, list[float]]:
        return {"identity": self.identity.tolist(), "attribute": self.attribute.tolist(),
                "total": self.total.tolist()}


class FalcoLoss(nn.Module):
    def __init__(self, arcface: nn.Module, farl: nn.Module, lambda_id: float, lambda_attr: float):
        super().__init__()
        self.arcface, self.farl = arcface, farl
        self.lambda_id, self.lambda_attr = lambda_id, lambda_attr

    def identity_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.arcface(identity_preprocess(images))

    def attribute_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.farl.tokens(farl_preprocess(images, self.farl.config["image_size"]))

    @torch.no_grad()
    def real_features(self, images: torch.Tensor) -> RealFeatures:
        return RealFeatures(self.identity_embedding(images), self.attribute_tokens(images))

    def forward(self, images: torch.Tensor, real: RealFeatures, margins: torch.Tensor) -> LossTerms:
        cosine = (self.identity_embedding(images) * real.identity).sum(dim=-1)
        identity = (cosine - margins).abs()
        attribute = (self.attribute_tokens(images) - real.tokens).abs().mean(dim=-1).sum(dim=-1)
        return LossTerms(cosine, identity, attribute, self.lambda_id * identity + self.lambda_attr * attribute)


@dataclass(frozen=True)
class OptimStep:
    step: int                 # 1..total_steps
    total_steps: int
    lr: float                 # the learning rate this step used
    terms: LossTerms          # of the latents this step started from (the ones `image` shows)
    image: torch.Tensor       # [B, 3, R, R] in [-1, 1], R = loss resolution (1024, or 256 on the skip path)
    wplus: torch.Tensor       # [B, num_ws, D] after this step's update


def compose_wplus(wplus_real: torch.Tensor, trained: torch.Tensor, rows: tuple[int, int]) -> torch.Tensor:
    start, stop = rows
    return torch.cat([wplus_real[:, :start], trained, wplus_real[:, stop:]], dim=1)


def start_wplus(wplus_real: torch.Tensor, w_fake: torch.Tensor, rows: tuple[int, int]) -> torch.Tensor:
    """Where the optimisation starts: the fake's w in the trained rows, the real inversion elsewhere."""
    return compose_wplus(wplus_real, w_fake[:, None].expand(-1, rows[1] - rows[0], -1), rows)


def loss_resolution(generator, config: OptimConfig) -> int | None:
    """Resolution the generator stops at for the losses; None renders the full image."""
    if config.loss_on_skip256 and generator.size > LOSS_RESOLUTION:
        return LOSS_RESOLUTION
    return None


def optimize_latents(generator: nn.Module, loss: FalcoLoss, real: RealFeatures, wplus_real: torch.Tensor,
                     w_fake: torch.Tensor, margins: torch.Tensor, config: OptimConfig) -> Iterator[OptimStep]:
    """Yield one OptimStep per Adam step.  Closing the iterator stops the work.

    wplus_real [B, num_ws, D]: inversions (latent_avg included); w_fake [B, D]: each item's
    fake; margins [B]: each item's m.  Network weights must be frozen: only the latents
    get gradients.
    """
    start, stop = config.trained_rows
    if not 0 <= start < stop <= wplus_real.shape[1]:
        raise ValueError(f"trained_rows {config.trained_rows} outside W+ of {wplus_real.shape[1]} rows")
    wplus_real = wplus_real.detach()
    margins = margins.to(wplus_real)
    trained = w_fake.detach()[:, None].expand(-1, stop - start, -1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([trained], lr=config.lr)
    milestones = sorted({int(f * config.steps) for f in config.lr_milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.lr_decay)
    resolution = loss_resolution(generator, config)
    for step in range(1, config.steps + 1):
        # Grad mode is thread state: enable it around the work only, never across the yield.
        lr = optimizer.param_groups[0]["lr"]
        with torch.enable_grad():
            image = generator(compose_wplus(wplus_real, trained, config.trained_rows), resolution=resolution)
            terms = loss(image, real, margins)
            optimizer.zero_grad(set_to_none=True)
            terms.total.sum().backward()
            optimizer.step()
            scheduler.step()
        yield OptimStep(step, config.steps, lr, terms.detach(), image.detach(),
                        compose_wplus(wplus_real, trained.detach(), config.trained_rows))
