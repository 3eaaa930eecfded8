"""What a visitor is told when something fails: one line, never a server path or a traceback.

FalcoErrors are expected outcomes (no face, a bad file) and say what to do; anything else is
logged in full for the operator and shown as a generic line.
"""

from __future__ import annotations

import logging
import re

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


# ZeroGPU's refusals: the `spaces` package raises gr.Errors titled "ZeroGPU ..." (spaces.zero.client.schedule,
# spaces.zero.wrappers), with messages meant for developers and links meant for API callers.
ZEROGPU_QUOTA = ("Your ZeroGPU time on this Space is used up for now ({asked} s asked, {left} s left): try again "
                 "in {wait}, or log in to Hugging Face for a larger quota.")
ZEROGPU_RUNS = "You have run this Space's GPU as often as ZeroGPU allows for now: try again later."
ZEROGPU_SPACE_QUOTA = "This Space has used up its ZeroGPU time for now: try again in a few minutes."
ZEROGPU_BUSY = "No GPU was free for this Space within a minute (ZeroGPU is busy): try again in a minute."
ZEROGPU_TOO_LONG = ("This run asks for more GPU time than ZeroGPU lets one run have: use fewer steps, faces or "
                    "m values (or a shorter clip), then try again.")
ZEROGPU_PENDING = "Your other ZeroGPU runs hold your GPU time: try again when they have ended."
ZEROGPU_ABORTED = ("The GPU was taken back before the run ended (it took longer than it asked for): try again "
                   "with fewer steps, faces or frames.")
ZEROGPU_OTHER = "ZeroGPU could not lend this Space a GPU just now: try again in a minute."


def zerogpu_refusal(err: BaseException) -> str | None:
    """The page's line for a refusal from ZeroGPU (quota used up, no GPU free, a duration over the cap, a slot
    ended early), else None."""
    title, message = str(getattr(err, "title", "") or ""), str(getattr(err, "message", "") or "")
    if not title.startswith("ZeroGPU"):
        return None
    log.warning("ZeroGPU refused a run: %s: %s", title, message.split("\n", 1)[0])
    if title == "ZeroGPU illegal duration" or "larger than the maximum" in message:
        return ZEROGPU_TOO_LONG
    if title == "ZeroGPU pending credits exceeded":
        return ZEROGPU_PENDING
    if title == "ZeroGPU worker error":
        return ZEROGPU_ABORTED if "aborted" in message else UNEXPECTED_MESSAGE
    if "No GPU was available" in message:
        return ZEROGPU_BUSY
    if quota := re.search(r"\((\d+)s requested vs\. (-?\d+)s left\)\. Try again in ([^.]+)\.", message):
        asked, left, wait = quota.groups()
        return ZEROGPU_QUOTA.format(asked=asked, left=max(int(left), 0), wait=readable_wait(wait))
    if "runs limit" in message:
        return ZEROGPU_RUNS
    if "reached its GPU limit" in message:
        return ZEROGPU_SPACE_QUOTA
    return ZEROGPU_OTHER


def readable_wait(wait: str) -> str:
    """A timedelta's text ("0:03:27", "1 day, 2:00:00") in words: "3 min 27 s"."""
    clock = re.fullmatch(r"(?:(\d+) days?, )?(\d+):(\d\d):(\d\d)(?:\.\d+)?", wait.strip())
    if clock is None:
        return wait.strip()
    days, hours, minutes, seconds = (int(part or 0) for part in clock.groups())
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")]
    return " ".join(f"{value} {unit}" for value, unit in parts if value) or "a moment"


def describe_error(err: BaseException) -> str:
    """The one line a visitor sees for ``err``; anything unexpected is logged in full."""
    if isinstance(err, FalcoError):
        return str(err)
    if (refusal := zerogpu_refusal(err)) is not None:
        return refusal
    if isinstance(err, torch.cuda.OutOfMemoryError):
        log.warning("out of GPU memory (%s)", str(err).split("\n", 1)[0])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return OOM_MESSAGE
    log.error("unexpected error in the app", exc_info=err)
    return UNEXPECTED_MESSAGE
