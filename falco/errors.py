"""Errors whose message is meant for the person using the app or the CLI.

Every failure a user can cause or fix (bad input, no face, missing weights) raises a
subclass of FalcoError with a one-line message that says what to do; the app shows
that message in the page instead of a traceback.
"""


class FalcoError(Exception):
    """Base class: ``str(err)`` is a short, user-facing sentence."""


class InputImageError(FalcoError):
    """The uploaded file is not a usable image (not an image, truncated, too large, empty)."""


class NoFaceError(FalcoError):
    """No face that can be anonymized was found in the photo."""


class WeightsError(FalcoError):
    """Weights are missing, corrupted, or cannot be downloaded."""


class HubUnavailableError(WeightsError):
    """The Hub or the network failed for now (unreachable, timed out, a 5xx, 408 or 429): a later try may work."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (or its type's name), for one-line messages that quote a cause."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class InputVideoError(FalcoError):
    """The clip cannot be used: not a video this app can read, damaged, empty, or over a length limit."""
