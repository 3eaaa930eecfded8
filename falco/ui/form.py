"""What one run asks for: the form's values (the page's or the API's) turned into RunSettings.

Text becomes values here; every rule and its message is falco.checks'.  The page's Run and
Compare buttons and the API endpoint all go through ``settings_from_form``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from falco.checks import check_margins, check_optim
from falco.config import OptimConfig
from falco.errors import FalcoError
from falco.faces import DetectedFace


@dataclass(frozen=True)
class RunSettings:
    faces: tuple[int, ...] | None      # 0-based indices in detection order; None: every usable face
    margins: tuple[float, ...]
    optim: OptimConfig
    another_fake: bool                 # draw the fake among the k nearest (seeded) instead of the nearest
    detections: list[DetectedFace] | None = None   # this photo's faces, when the page already found them


def parse_faces(text: str) -> tuple[int, ...] | None:
    """ "all" (or empty) -> None; "1, 3" -> (0, 2)."""
    text = ("" if text is None else str(text)).strip().lower()
    if text in ("", "all"):
        return None
    try:
        numbers = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise FalcoError(f"Faces must be 'all' or face numbers separated by commas, not {text!r}.") from None
    if not numbers or min(numbers) < 1:
        raise FalcoError("Face numbers start at 1.")
    return tuple(sorted({n - 1 for n in numbers}))


def parse_margins(text: str, limit: int) -> tuple[float, ...]:
    """ "0, 0.5;1" -> (0.0, 0.5, 1.0), repeats dropped; at most ``limit`` values (falco.checks' rules)."""
    try:
        values = [float(v) for v in ("" if text is None else str(text)).replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise FalcoError(f"m values must be numbers between 0 and 1 separated by commas, not {text!r}.") from None
    return check_margins(values, limit)


def _number(name: str, value: Any, whole: bool = False) -> float:
    """``value`` as sent (the page and the API hand their numbers over unprocessed): a finite number, whole when
    asked; nothing is rounded or clamped without a word."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FalcoError(f"{name} must be a number.")
    if whole and value != int(value):
        raise FalcoError(f"{name} must be a whole number, not {value:g}.")
    return value


def parse_optim(base: OptimConfig, steps: Any, lr: Any, lambda_id: Any, lambda_attr: Any, seed: Any,
                max_steps: int) -> OptimConfig:
    """The form's numbers over ``base``; a FalcoError of one line for any that is missing or out of range."""
    optim = replace(base, steps=int(_number("Steps", steps, whole=True)), lr=float(_number("The learning rate", lr)),
                    lambda_id=float(_number("lambda_id", lambda_id)),
                    lambda_attr=float(_number("lambda_attr", lambda_attr)),
                    seed=int(_number("The seed", seed, whole=True)))
    return check_optim(optim, max_steps)


@dataclass(frozen=True)
class RunForm:
    """One run as the page or the API asks for it: values as they arrive (a number may be missing)."""
    photo: str | None                  # the uploaded photo's path in Gradio's cache
    faces: tuple[int, ...] | None      # 0-based indices in detection order; None: every usable face
    margins: str                       # one or more m, separated by commas
    steps: Any
    lr: Any
    lambda_id: Any
    lambda_attr: Any
    seed: Any
    another_fake: Any = False


def settings_from_form(form: RunForm, base: OptimConfig, max_margins: int, max_steps: int) -> RunSettings:
    """The RunSettings of a form; a FalcoError naming the first bad value.  Steps 0 (or none) is ``base``'s."""
    steps = base.steps if form.steps is None or (form.steps == 0 and not isinstance(form.steps, bool)) else form.steps
    margins = parse_margins(form.margins, max_margins)
    optim = parse_optim(base, steps, form.lr, form.lambda_id, form.lambda_attr, form.seed, max_steps)
    if not isinstance(form.another_fake, bool) and form.another_fake is not None:
        raise FalcoError(f"another_fake must be true or false, not {form.another_fake!r}.")
    return RunSettings(form.faces, margins, optim, bool(form.another_fake))
