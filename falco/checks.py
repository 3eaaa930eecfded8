"""What a run asks for, checked once for every front end (the app, its API, the command line).

Each bad value is a FalcoError of one line, raised before any network runs; the command
line calls this before it loads the networks, the pipeline on every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from falco.config import OptimConfig
from falco.errors import FalcoError

# Seeds travel as 64-bit signed integers (torch generators, JSON readers of other languages).
SEED_LIMIT = 2**63


def check_run_settings(margins: Sequence[float], optim: OptimConfig, fake_k: int,
                       bank_size: int | None = None) -> tuple[float, ...]:
    """The m values as floats, repeats dropped; a FalcoError naming the first bad value.

    ``bank_size``: the fake bank's rows, when known (fake_k cannot exceed it)."""
    values = tuple(float(m) for m in margins)
    if not values:
        raise FalcoError("Give at least one value of m.")
    for m in values:
        if not 0.0 <= m <= 1.0:   # NaN fails this too
            raise FalcoError(f"Every m must lie between 0 and 1, not {m:g}.")
    if optim.steps < 1:
        raise FalcoError(f"Steps must be at least 1, not {optim.steps}.")
    if not 0 < optim.lr < math.inf:
        raise FalcoError(f"The learning rate must be above 0, not {optim.lr:g}.")
    for name, value in (("lambda_id", optim.lambda_id), ("lambda_attr", optim.lambda_attr)):
        if not 0 <= value < math.inf:
            raise FalcoError(f"{name} must not be negative, not {value:g}.")
    if not 0 <= optim.seed < SEED_LIMIT:
        raise FalcoError(f"The seed must lie between 0 and 2**63 - 1, not {optim.seed}.")
    if fake_k < 1:
        raise FalcoError(f"fake_k (draw the fake among the k nearest) must be at least 1, not {fake_k}.")
    if bank_size is not None and fake_k > bank_size:
        raise FalcoError(f"fake_k is {fake_k} but the fake bank holds {bank_size} fakes.")
    return tuple(dict.fromkeys(values))
