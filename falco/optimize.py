"""The latent optimisation loop (the loss is falco.loss's; the CUDA graph recording falco.cuda_graph's).

A batch holds B items (faces x margins).  Each item optimises its own copy of W+ rows
[start, stop) (3..7 by default), starting from its fake's w; every other row stays the
real face's inversion.  The loss of an item only depends on that item's latents, and
the batch loss is the sum of the item losses, so with Adam (elementwise) a batch takes
the same steps as B separate runs.

Both the anonymized image and the real face go through the same preprocessing ([-1, 1]
in, resized and normalised as the model modules do), and the real face's features are
computed once, before the loop.

Same inputs, same device, same result: on CUDA the backward passes of antialiased
``interpolate`` and of ``adaptive_avg_pool2d`` add with atomics and cuDNN may pick
non-deterministic algorithms, so two identical runs drift apart and Adam amplifies the
drift (on an H100, W+ differed by 0.02 after 10 steps).  With ``OptimConfig.deterministic``
the resampling runs as matrix products (the same linear maps) and cuDNN is made
deterministic during the steps; on an H100 that made runs bit-identical at no measurable cost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from falco import allocator, cuda_graph
from falco.config import OptimConfig
from falco.loss import FalcoLoss, LossTerms, RealFeatures
from falco.models.stylegan2 import full_precision

log = logging.getLogger(__name__)

# The losses only look at 256 (ArcFace) and 224 (FaRL) pixels.
LOSS_RESOLUTION = 256


@contextmanager
def deterministic_cudnn(enabled: bool):
    """cuDNN's deterministic algorithms for the duration (a process-wide flag)."""
    previous = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = previous or enabled
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic = previous


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


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}   # autocast dtype of OptimConfig.precision


def step_losses(generator: nn.Module, loss: FalcoLoss, real: RealFeatures, wplus: torch.Tensor,
                margins: torch.Tensor, config: OptimConfig) -> tuple[torch.Tensor, LossTerms]:
    """One step's forward: the image the losses look at, and the loss terms (differentiable in wplus)."""
    dtype = PRECISIONS[config.precision]
    # Autocast caches casts of leaf tensors that require grad: only the latents, which change every step
    # (nothing to reuse), and CUDA graph capture needs the cache off.
    with (torch.autocast(wplus.device.type, dtype=dtype, cache_enabled=False) if dtype is not None
          else full_precision(wplus)):
        image = generator(wplus, resolution=loss_resolution(generator, config), channels_last=config.channels_last)
        return image, loss(image, real, margins)


@lru_cache(maxsize=4)
def compiled_step_losses(mode: str):
    # One compiled function per mode for every run: dynamo caches its graphs per input shapes and networks.
    return torch.compile(step_losses, mode=mode)


def items_per_pass(config: OptimConfig, device: torch.device, batch: int) -> int:
    """How many batch items go through one forward + backward pass (OptimConfig.max_batch)."""
    if config.max_batch is not None:
        if config.max_batch < 1:
            raise ValueError(f"max_batch {config.max_batch}: expected at least 1 item per pass")
        return min(config.max_batch, batch)
    return 1 if device.type == "cpu" else batch


def optimize_latents(generator: nn.Module, loss: FalcoLoss, real: RealFeatures, wplus_real: torch.Tensor,
                     w_fake: torch.Tensor, margins: torch.Tensor, config: OptimConfig,
                     trained_start: torch.Tensor | None = None) -> Iterator[OptimStep]:
    """Yield one OptimStep per Adam step.  Closing the iterator stops the work.

    wplus_real [B, num_ws, D]: inversions (latent_avg included); w_fake [B, D]: each item's
    fake; margins [B]: each item's m.  Network weights must be frozen: only the latents
    get gradients.  ``trained_start`` [B, rows, D]: where the trained rows start instead of
    the fake's w (a video frame's refinement starts from its inversion plus its track's offset).
    """
    start, stop = config.trained_rows
    if not 0 <= start < stop <= wplus_real.shape[1]:
        raise ValueError(f"trained_rows {config.trained_rows} outside W+ of {wplus_real.shape[1]} rows")
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision {config.precision!r}: expected one of {sorted(PRECISIONS)}")
    forward = compiled_step_losses(config.compile) if config.compile else step_losses
    wplus_real = wplus_real.detach()
    margins = margins.to(wplus_real)
    if trained_start is None:
        trained_start = w_fake.detach()[:, None].expand(-1, stop - start, -1)
    trained = trained_start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([trained], lr=config.lr)
    milestones = sorted({int(f * config.steps) for f in config.lr_milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.lr_decay)

    batch = trained.shape[0]
    per_pass = items_per_pass(config, wplus_real.device, batch)
    passes = [slice(i, min(i + per_pass, batch)) for i in range(0, batch, per_pass)]
    # A compiled step with CUDA graphs writes each pass's outputs where the previous pass's were.
    keep = (lambda t: t.detach().clone()) if config.compile else torch.Tensor.detach

    def forward_backward() -> tuple[torch.Tensor, LossTerms]:
        """Every item's image and loss terms, and the gradient of their sum in trained.grad (accumulated)."""
        images, parts = [], []
        for items in passes:   # items are independent: a pass's gradient lands in its own rows of trained.grad
            wplus = compose_wplus(wplus_real[items], trained[items], config.trained_rows)
            image, part = forward(generator, loss, real.select(items), wplus, margins[items], config)
            part.total.sum().backward()
            images.append(keep(image))
            parts.append(part.map(keep))
        return torch.cat(images), LossTerms.cat(parts)

    # torch.compile's "reduce-overhead" mode records graphs of its own.
    record = (config.cuda_graph and not config.compile and config.steps >= cuda_graph.MIN_STEPS_TO_RECORD
              and cuda_graph.can_record(wplus_real.device))
    captured = None
    with allocator.reusing():   # the steps reuse each other's freed memory; it goes back after the last one
        for step in range(1, config.steps + 1):
            # Grad mode is thread state: enable it around the work only, never across the yield.
            lr = optimizer.param_groups[0]["lr"]
            with torch.enable_grad(), deterministic_cudnn(config.deterministic):
                if record and captured is None:
                    captured = cuda_graph.record_step(forward_backward, trained)
                    record = captured is not None
                if captured is not None:
                    image, terms = captured()   # also writes trained.grad
                else:
                    if config.compile:
                        torch.compiler.cudagraph_mark_step_begin()   # CUDA graphs: the last step's outputs are free
                    optimizer.zero_grad(set_to_none=True)
                    image, terms = forward_backward()
                optimizer.step()
                scheduler.step()
            if captured is not None:   # a recording writes the next step's outputs in the same memory
                image, terms = image.clone(), terms.map(torch.Tensor.clone)
            yield OptimStep(step, config.steps, lr, terms, image,
                            compose_wplus(wplus_real, trained.detach(), config.trained_rows))
