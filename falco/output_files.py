"""Writing output files: whole or not at all, with the umask's permissions.

Every file the app and the command line write for a user goes through here: a file is
written beside its final name and renamed into place, so an interrupted write (Ctrl-C, a
full disk) never leaves a half-written file under the final name.  JSON (records, run.json,
metrics, manifests) has one writer too, ``save_json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

# torch loads with save_tensors: the command line imports this module before it parses its arguments, and
# torch's seconds there would delay its usage errors and meet a Ctrl-C with a traceback.
if TYPE_CHECKING:
    import torch


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
    """A safetensors file, written as bytes: safetensors' own save_file makes files readable by their owner
    alone, whatever the umask."""
    from safetensors.torch import save

    data = save(dict(tensors), metadata=metadata)
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def save_image(image: Image.Image, path: Path, jpeg_quality: int = 95) -> Path:
    """The image in the format its suffix names.  Fresh images carry no metadata: EXIF (GPS, names,
    thumbnails) can identify people too."""
    fmt = Image.registered_extensions()[Path(path).suffix.lower()]
    options = {"quality": jpeg_quality} if fmt == "JPEG" else {}
    return write_atomic(path, lambda tmp: image.save(tmp, format=fmt, **options))
