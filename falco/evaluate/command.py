"""What the evaluation's two commands (photos: ``falco.evaluate.__main__``, clips: ``clip_cli``) share: the
output folder, the closing lines and the exit statuses (0 done, 1 an error stopped it, 2 a usage error, 130
interrupted)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from falco.errors import FalcoError


def check_out(usage: argparse.ArgumentParser, out: Path) -> None:
    """A usage error when ``--out`` names a file."""
    if out.exists() and not out.is_dir():
        usage.error(f"--out {out} is a file, not a folder")


def run(evaluate: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``evaluate(args)``, its errors one line on stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return evaluate(args)
    except FalcoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def output_folder(out: Path) -> Path:
    """``out``, made where it is missing (after the measuring: a failed run leaves no empty folder)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FalcoError(f"Cannot create the output folder {out}: {err.strerror or err}.") from None
    return out


def finish(table: str, out: Path) -> int:
    print(table)
    print(f"\nmetrics.json and report.html written to {out}")
    return 0
