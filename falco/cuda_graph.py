"""A step's forward and backward recorded once as a CUDA graph and replayed (OptimConfig.cuda_graph).

At batch 1 the eager step is bound by launching its kernels; a replay launches them all at
once.  A recording is used only once its first replay has reproduced an eager step; where
capture refuses an operation or the replay differs, the run goes on eagerly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

from falco.loss import LossTerms

log = logging.getLogger(__name__)


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
