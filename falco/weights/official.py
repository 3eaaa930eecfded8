"""Placeholder: replaced by the official-sources branch (the official download sources of each file)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def fetch_official(name: str, folder: Path, check: Callable[[Path, object], None] | None = None,
                   progress: Callable[[float | None], None] | None = None, sources=None) -> tuple[Path, object]:
    raise NotImplementedError("replaced by the official-sources branch")
