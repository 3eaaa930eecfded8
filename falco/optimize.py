"""FALCO's loss and the latent optimisation loop.

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
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from falco.config import OptimConfig
from falco.models.arcface import identity_preprocess, identity_preprocess_matrix
from falco.models.farl import farl_preprocess, farl_preprocess_matrix
from falco.models.stylegan2 import full_precision

log = logging.getLogger(__name__)

# The losses only look at 256 (ArcFace) and 224 (FaRL) pixels.
LOSS_RESOLUTION = 256


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


@contextmanager
def deterministic_cudnn(enabled: bool):
    """cuDNN's deterministic algorithms for the duration (a process-wide flag)."""
    previous = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = previous or enabled
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic = previous


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


class RecordingMismatch(RuntimeError):
    """A recorded step computed something else than the eager step it was recorded from."""


# Recording costs about WARMUP + 2 steps (the warm-up, the capture, the check): shorter runs stay eager.
MIN_STEPS_TO_RECORD = 8
_recording = threading.Lock()   # one capture at a time per process (they share torch's capture stream)
_recording_failed: str | None = None   # after a failed capture, the process records no more (see record_step)


def can_record(device: torch.device) -> bool:
    """Whether steps on ``device`` can be recorded as a CUDA graph."""
    return device.type == "cuda" and _recording_failed is None


def close_to(value: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-3) -> bool:
    """Within ``rtol`` of the reference's largest magnitude, everywhere (NaN never is)."""
    return bool((value - reference).abs().max() <= rtol * reference.abs().max() + 1e-8)


class CapturedStep:
    """A step's forward and backward recorded once as a CUDA graph, then replayed.

    At batch 1 the eager step is bound by launching its thousands of kernels (an H100 waits
    on the CPU); a replay launches them all at once.  Every replay recomputes the same graph
    on the current contents of its inputs (the trained rows, updated in place by Adam) and
    writes the image, the loss terms and ``trained.grad`` into the same memory.

    The recording is trusted only once its first replay has reproduced the last eager warm-up
    pass (same latents): loss terms and gradient, which are set to NaN before that replay so that
    a graph that does not write them fails; that replay's outputs serve the first call.
    """

    WARMUP = 3   # eager passes first, on a side stream: cuDNN plans and caches are made outside the capture

    def __init__(self, step: Callable[[], tuple[torch.Tensor, LossTerms]], trained: torch.Tensor):
        """``step``: a forward + backward pass that returns the image and loss terms and accumulates the
        gradient in ``trained.grad``."""
        stream = torch.cuda.current_stream(trained.device)
        try:
            with torch.cuda.device(trained.device):   # a graph captures only its stream's device
                self._record(step, trained)
        finally:
            torch.cuda.set_stream(stream)   # a capture that failed to end may leave its own stream current
        self._replayed = True

    def _record(self, step: Callable[[], tuple[torch.Tensor, LossTerms]], trained: torch.Tensor) -> None:
        device = trained.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                trained.grad = None
                _, eager = step()
            eager_total, eager_grad = eager.total.clone(), trained.grad.clone()
            del eager
        torch.cuda.current_stream(device).wait_stream(side)
        trained.grad = None   # the graph allocates the gradient it writes
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the app's other threads may use the GPU meanwhile without spoiling the capture.
        with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(device), capture_error_mode="thread_local"):
            self.image, self.terms = step()
        self.terms.total.fill_(float("nan"))
        trained.grad.fill_(float("nan"))
        self.graph.replay()
        if not (close_to(self.terms.total, eager_total) and close_to(trained.grad, eager_grad)):
            raise RecordingMismatch("the replayed step differs from the eager step")

    def __call__(self) -> tuple[torch.Tensor, LossTerms]:
        if self._replayed:   # the check's replay ran on these very latents
            self._replayed = False
        else:
            self.graph.replay()
        return self.image, self.terms


def record_step(step: Callable[[], tuple[torch.Tensor, LossTerms]], trained: torch.Tensor) -> CapturedStep | None:
    """The recorded step, or None (logged) where it cannot be recorded or is not faithful: the run goes on eagerly.

    A failed capture may leave memory behind in torch's allocator, so after one the process records
    no more.  Running out of memory is not a recording problem: it is raised (an eager step would not fit
    either).
    """
    global _recording_failed
    with _recording:
        try:
            return CapturedStep(step, trained)
        except torch.cuda.OutOfMemoryError:
            trained.grad = None
            raise
        except RuntimeError as err:   # capture refused an operation, or the replay differed
            trained.grad = None
            _recording_failed = str(err)
            log.warning("the step could not be recorded as a CUDA graph (%s): running eagerly from now on", err)
            return None


def items_per_pass(config: OptimConfig, device: torch.device, batch: int) -> int:
    """How many batch items go through one forward + backward pass (OptimConfig.max_batch)."""
    if config.max_batch is not None:
        if config.max_batch < 1:
            raise ValueError(f"max_batch {config.max_batch}: expected at least 1 item per pass")
        return min(config.max_batch, batch)
    return 1 if device.type == "cpu" else batch


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
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision {config.precision!r}: expected one of {sorted(PRECISIONS)}")
    forward = compiled_step_losses(config.compile) if config.compile else step_losses
    wplus_real = wplus_real.detach()
    margins = margins.to(wplus_real)
    trained = w_fake.detach()[:, None].expand(-1, stop - start, -1).clone().requires_grad_(True)
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
    record = (config.cuda_graph and not config.compile and config.steps >= MIN_STEPS_TO_RECORD
              and can_record(wplus_real.device))
    captured = None
    for step in range(1, config.steps + 1):
        # Grad mode is thread state: enable it around the work only, never across the yield.
        lr = optimizer.param_groups[0]["lr"]
        with torch.enable_grad(), deterministic_cudnn(config.deterministic):
            if record and captured is None:
                captured = record_step(forward_backward, trained)
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
