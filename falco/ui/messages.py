"""What a visitor is told when something fails: one line, never a server path or a traceback.

FalcoErrors are expected outcomes (no face, a bad file) and say what to do; anything else is
logged in full for the operator and shown as a generic line.
"""

from __future__ import annotations

import logging

import torch

from falco.errors import FalcoError

log = logging.getLogger(__name__)

OOM_MESSAGE = ("The GPU ran out of memory. Try fewer faces, fewer m values, or fewer steps, "
               "or try again when the Space is less busy.")
UNEXPECTED_MESSAGE = "Something went wrong on the server (it has been logged). Please try again."
LOAD_FAILED_MESSAGE = "The models could not be loaded; the server log says why."
PHOTO_NOT_UPLOADED = "The photo must be uploaded with the call."
PHOTO_GONE = "The photo is no longer on the server; please upload it again."
STOPPED_WAITING = "Stopped before it started; the earlier results stay."
STOPPED_EARLY = "Stopped before its first step; the earlier results stay."
RUN_GOING = "Your run is still going (or stopping): wait for it to end, or press Stop, then run again."


def describe_error(err: BaseException) -> str:
    """The one line a visitor sees for ``err``; anything unexpected is logged in full."""
    if isinstance(err, FalcoError):
        return str(err)
    if isinstance(err, torch.cuda.OutOfMemoryError):
        log.warning("out of GPU memory (%s)", str(err).split("\n", 1)[0])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return OOM_MESSAGE
    log.error("unexpected error in the app", exc_info=err)
    return UNEXPECTED_MESSAGE
