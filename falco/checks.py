"""Every rule on what a run may ask for, with its message: the one home of each.

Front ends (the page, its API, the command line) only turn text into values and pass their
own limits (the page's most m values and steps); the rules and the words are here.  Each bad
value is a FalcoError of one line that names the value, raised before any network runs: the
command line checks before it loads the networks, the pipeline at the start of every run.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from falco.config import OptimConfig
from falco.errors import FalcoError, InputVideoError

if TYPE_CHECKING:
    from falco.faces import DetectedFace

# Seeds travel as 64-bit signed integers (torch generators, JSON readers of other languages).
SEED_LIMIT = 2**63


def check_margins(margins: Sequence[float], limit: int | None = None) -> tuple[float, ...]:
    """The m values as floats, each in [0, 1], repeats dropped; at most ``limit`` of them when given."""
    values = tuple(float(m) for m in margins)
    if not values:
        raise FalcoError("Give at least one value of m.")
    for m in values:
        if not 0.0 <= m <= 1.0:   # NaN fails this too
            raise FalcoError(f"Every m must lie between 0 and 1, not {m:g}.")
    if limit is not None and len(values) > limit:
        raise FalcoError(f"At most {limit} values of m in one run, not {len(values)}.")
    return tuple(dict.fromkeys(values))


def check_optim(optim: OptimConfig, max_steps: int | None = None) -> OptimConfig:
    """``optim`` unchanged, or a FalcoError naming its first bad value; at most ``max_steps`` when given."""
    if optim.steps < 1:
        raise FalcoError(f"Steps must be at least 1, not {optim.steps}.")
    if max_steps is not None and optim.steps > max_steps:
        raise FalcoError(f"Steps must be at most {max_steps}, not {optim.steps}.")
    if not 0 < optim.lr < math.inf:
        raise FalcoError(f"The learning rate must be above 0, not {optim.lr:g}.")
    for name, value in (("lambda_id", optim.lambda_id), ("lambda_attr", optim.lambda_attr)):
        if not 0 <= value < math.inf:
            raise FalcoError(f"{name} must not be negative, not {value:g}.")
    if not 0 <= optim.seed < SEED_LIMIT:
        raise FalcoError(f"The seed must lie between 0 and 2**63 - 1, not {optim.seed}.")
    return optim


def check_fake_k(fake_k: int, bank_size: int | None = None) -> int:
    """``fake_k`` (draw the fake among the k nearest) unchanged; at most the bank's rows when known."""
    if fake_k < 1:
        raise FalcoError(f"fake_k (draw the fake among the k nearest) must be at least 1, not {fake_k}.")
    if bank_size is not None and fake_k > bank_size:
        raise FalcoError(f"fake_k is {fake_k} but the fake bank holds {bank_size} fakes.")
    return fake_k


def check_run_settings(margins: Sequence[float], optim: OptimConfig, fake_k: int,
                       bank_size: int | None = None) -> tuple[float, ...]:
    """Every setting of a run; returns the m values as ``check_margins`` does."""
    values = check_margins(margins)
    check_optim(optim)
    check_fake_k(fake_k, bank_size)
    return values


def check_refine_steps(steps: int) -> int:
    """A clip's optimisation steps per frame (0: none, the person's identity as it is)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise FalcoError(f"Refine steps are counted in whole steps, not {steps!r}.")
    if steps < 0:
        raise FalcoError(f"Refine steps must not be negative, not {steps}.")
    return int(steps)


def check_face_picks(picks: Sequence[object] | None, faces: Sequence[DetectedFace]) -> tuple[int, ...]:
    """The faces to anonymize (indices into ``faces``, detection order), sorted, repeats dropped.  ``None``:
    every usable face (NoFaceError, saying why, when there is none).  A face is named by its number,
    counted from 1 as the page shows it."""
    if picks is None:
        from falco.faces import require_usable
        return tuple(require_usable(list(faces)))
    if not picks:
        raise FalcoError("Choose at least one face to anonymize.")
    for pick in picks:
        if isinstance(pick, bool) or not isinstance(pick, numbers.Integral):
            raise FalcoError(f"Faces are chosen by number, not {pick!r}.")
    chosen = tuple(sorted({int(pick) for pick in picks}))
    for i in chosen:
        if not 0 <= i < len(faces):
            raise FalcoError(f"The photo has {len(faces)} detected face(s); there is no face {i + 1}.")
        if not faces[i].usable:
            raise FalcoError(f"Face {i + 1} cannot be anonymized: {faces[i].reason}.")
    return chosen


def check_video_length(seconds: float, limit: float | None) -> float:
    """A clip's length, at most ``limit`` seconds (None: any length)."""
    if limit is not None and seconds > limit:
        raise InputVideoError(f"The clip lasts {seconds:.1f} s; at most {limit:g} s are accepted here. "
                              "Trim it and try again.")
    return seconds


def check_batch_size(batch: int) -> int:
    """Photos per optimisation (the command line's --batch)."""
    if batch < 1:
        raise FalcoError(f"--batch (photos optimised together) must be at least 1, not {batch}.")
    return batch


def check_dataset_columns(features: Mapping[str, object], wanted: str | None, default: str,
                          added: Sequence[str]) -> str:
    """The image column of a dataset with these ``features`` (datasets' Features): ``wanted``, else ``default``,
    else the only column of images.  The columns a run adds (``added``) must not be there already."""
    images = [name for name, feature in features.items() if getattr(feature, "_type", None) == "Image"]
    clash = [name for name in added if name in features]
    if clash:
        raise FalcoError(f"The dataset already has the column(s) {', '.join(clash)}, which the anonymized dataset "
                         "adds: rename or remove them first (datasets' rename_column).")
    if wanted is not None:
        if wanted not in features:
            raise FalcoError(f"The dataset has no column {wanted!r}; its columns: {', '.join(features)}.")
        if wanted not in images:
            raise FalcoError(f"The column {wanted!r} does not hold images; "
                             f"the image columns: {', '.join(images) or 'none'}.")
        return wanted
    if default in images:
        return default
    if len(images) == 1:
        return images[0]
    raise FalcoError(f"Name the column of faces with --image-column: the dataset has no image column {default!r} "
                     f"and {len(images)} others ({', '.join(images) or 'none'}).")
