"""Writing output files: whole or not at all, with the umask's permissions.

Every file the app and the command line write for a user goes through here: a file is
written beside its final name and renamed into place, so an interrupted write (Ctrl-C, a
full disk) never leaves a half-written file under the final name.  JSON (records, run.json,
metrics, manifests) has one writer too, ``save_json``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from falco.config import PNG_COMPRESS_LEVEL

# torch loads with save_tensors: the command line imports this module before it parses its arguments, and
# torch's seconds there would delay its usage errors and meet a Ctrl-C with a traceback.
if TYPE_CHECKING:
    import torch


_umask_lock = threading.Lock()


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then rename ``tmp`` to ``path``; on any failure (Ctrl-C included) ``tmp`` is deleted."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_json(path: Path, value: object, indent: int = 2, final_newline: bool = False,
              default: Callable[[object], object] | None = None) -> Path:
    """``value`` as JSON (``json.dumps`` with ``indent`` and ``default``), written whole or not at all.
    ``final_newline``: metrics.json and the weights manifest end with one, records and run.json do not; each
    keeps the bytes it always had."""
    text = json.dumps(value, indent=indent, default=default) + ("\n" if final_newline else "")
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file with the umask's permissions.  safetensors' save_file streams the tensors from their own
    memory (a network's file is not built as one more copy of it in memory first) but makes the file readable by its
    owner alone, whatever the umask: the permissions are set back before the file takes its name."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(dict(tensors), str(tmp), metadata=metadata)
        os.chmod(tmp, 0o666 & ~current_umask())

    return write_atomic(path, write)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc/self/status, since 4.7)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        with _umask_lock:   # os.umask can only be read by setting it
            mask = os.umask(0o022)
            os.umask(mask)
            return mask


def save_image(image: Image.Image, path: Path, jpeg_quality: int = 95) -> Path:
    """The image in the format its suffix names.  Fresh images carry no metadata: EXIF (GPS, names,
    thumbnails) can identify people too."""
    fmt = Image.registered_extensions()[Path(path).suffix.lower()]
    options = ({"quality": jpeg_quality} if fmt == "JPEG" else
               {"compress_level": PNG_COMPRESS_LEVEL} if fmt == "PNG" else {})
    return write_atomic(path, lambda tmp: image.save(tmp, format=fmt, **options))
