"""Which device runs the networks: decided once, by the front end, and passed down.

ZeroGPU Spaces lend each run a GPU that the process cannot see beforehand, so there the
answer is CUDA without checking that a GPU is present.
"""

from __future__ import annotations

import os

import torch

from falco.config import CPU_RENDER_BATCH, GPU_RENDER_BATCH
from falco.errors import FalcoError

# Set by ZeroGPU Spaces (the `spaces` package reads the same variable).
ZEROGPU_ENV = "SPACES_ZERO_GPU"


def zerogpu_available() -> bool:
    """On a ZeroGPU Space each run gets a GPU for a while.  Spaces of every kind may have the ``spaces``
    package; ZeroGPU ones also set SPACES_ZERO_GPU."""
    if os.environ.get(ZEROGPU_ENV, "").strip().lower() not in ("1", "true", "yes"):
        return False
    try:
        import spaces  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_device(device: str | torch.device | None = None, present: bool = True) -> torch.device:
    """``device``, else CUDA where there is one, else the CPU.  An unknown name, or a CUDA device this machine
    does not have, is a FalcoError of one line; ``present=False`` skips the second check (ZeroGPU lends each run
    a GPU that the process cannot see before)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise FalcoError(f"Unknown device {device!r}: expected e.g. cpu, cuda or cuda:1.") from err
    if present and resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FalcoError(f"Device {str(device)!r} is not available: PyTorch finds no CUDA GPU on this machine; "
                             "use cpu.")
        if resolved.index is not None and resolved.index >= count:
            raise FalcoError(f"Device {str(device)!r} is not available: this machine has {count} CUDA GPU(s), "
                             f"cuda:0 to cuda:{count - 1}.")
    return resolved


def app_device(device: str | None, zerogpu: bool) -> torch.device:
    """The device the app's runs use: the one asked for, else CUDA on ZeroGPU (whose GPU each run is lent, so
    none is visible yet), else ``resolve_device``'s default."""
    return resolve_device(device or ("cuda" if zerogpu else None), present=not zerogpu)


def render_batch(device: torch.device) -> int:
    """Images per generator call outside the optimisation on ``device`` (falco.config's CPU_RENDER_BATCH)."""
    return CPU_RENDER_BATCH if device.type == "cpu" else GPU_RENDER_BATCH
