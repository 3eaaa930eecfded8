"""Where the app keeps what it downloads and prepares: on a Space's persistent storage when it has one.

A Space's disk is wiped on every restart (a free Space also sleeps and restarts), and with it the
Hugging Face cache and the set prepared on the first start.  When the persistent storage root
(``/data``, or ``$FALCO_PERSISTENT_ROOT``) is a writable folder, ``keep_on_persistent_storage``
points ``HF_HOME`` and ``FALCO_PREPARED_WEIGHTS`` there, each unless the environment sets it, so a
restart finds both.  huggingface_hub reads ``HF_HOME`` once, when it is first imported: the
entry points call this first thing, and this module imports neither huggingface_hub nor torch.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from falco.config import DEFAULT_PERSISTENT_ROOT, PERSISTENT_ROOT_ENV, PREPARED_WEIGHTS_ENV, SPACE_ID_ENV

log = logging.getLogger(__name__)

HF_HOME_ENV = "HF_HOME"
# Inside the root: the cache where Hugging Face's Spaces documentation puts it, the set beside it.
HF_HOME_IN_ROOT = ".huggingface"
PREPARED_IN_ROOT = "falco/prepared-weights"
RESTART_NOTE = ("This Space has no persistent storage: a restart prepares the models again. Attach persistent "
                "storage (/data) to keep them, or publish the prepared set (README \"First start\").")


def persistent_root(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """The persistent storage root (``$FALCO_PERSISTENT_ROOT``, else /data) where it is a folder this process can
    write to; else None."""
    root = Path(environ.get(PERSISTENT_ROOT_ENV) or DEFAULT_PERSISTENT_ROOT).expanduser()
    return root if root.is_dir() and os.access(root, os.W_OK | os.X_OK) else None


def keep_on_persistent_storage(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Point HF_HOME and FALCO_PREPARED_WEIGHTS into the persistent root, each unless ``environ`` sets it; the
    variables set.  Nothing without a writable root.  HF_HOME is left alone (with a warning) once huggingface_hub
    is imported: it has read it already, and the cache would then be one place and the variable another."""
    root = persistent_root(environ)
    if root is None:
        return {}
    chosen = {}
    if not environ.get(HF_HOME_ENV):
        if "huggingface_hub.constants" in sys.modules and environ is os.environ:
            log.warning("persistent storage %s found after huggingface_hub was imported: the Hugging Face cache "
                        "stays where it is (set HF_HOME, or decide the storage first thing)", root)
        else:
            chosen[HF_HOME_ENV] = str(root / HF_HOME_IN_ROOT)
    if not environ.get(PREPARED_WEIGHTS_ENV):
        chosen[PREPARED_WEIGHTS_ENV] = str(root / PREPARED_IN_ROOT)
    environ.update(chosen)
    if chosen:
        log.info("persistent storage %s: %s", root, ", ".join(f"{k}={v}" for k, v in chosen.items()))
    return chosen


def restart_prepares_again(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Whether a restart loses what a first start prepares: on a Space (its disk is wiped) without persistent
    storage.  Elsewhere the cache is on a disk that stays."""
    return bool(environ.get(SPACE_ID_ENV)) and persistent_root(environ) is None
