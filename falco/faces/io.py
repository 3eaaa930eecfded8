"""Whatever the user uploaded -> one 8-bit RGB photo, upright, or an InputImageError.

The caller's object is never modified: every path ends in a fresh image that shares no
memory with the input.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import FaceConfig
from ..errors import InputImageError

PhotoSource = Union[str, Path, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def load_photo(source: PhotoSource, config: FaceConfig | None = None) -> Image.Image:
    """Decode `source` (path, bytes, file object, PIL image or HxW[xC] array) to an RGB photo.

    EXIF orientation is applied, the first frame of animated or multi-page files is used,
    transparency is flattened onto white, and 16-bit/float data is scaled to 8 bits.
    """
    max_pixels = (config or FaceConfig()).max_image_pixels
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, max_pixels)
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        return _to_rgb(_first_frame_upright(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise InputImageError(f"Cannot read the photo: no file at {source}.")
        if Path(source).stat().st_size == 0:
            raise InputImageError("The file is empty (0 bytes).")
    if isinstance(source, io.BytesIO) and not source.getbuffer().nbytes:
        raise InputImageError("The file is empty (0 bytes).")
    try:
        with Image.open(source) as image:
            _check_size(image.size, max_pixels)
            return _to_rgb(_first_frame_upright(image))
    except UnidentifiedImageError:
        raise InputImageError("The file is not an image this app can read (or its header is damaged "
                              "or declares an empty image).") from None
    except Image.DecompressionBombError:
        raise InputImageError(_too_large_message(max_pixels)) from None
    except (OSError, SyntaxError, EOFError) as err:
        raise InputImageError(f"The image file is damaged or truncated ({err}).") from None


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputImageError(f"The image is empty ({width}x{height} pixels).")
    if width * height > max_pixels:
        raise InputImageError(_too_large_message(max_pixels, size))


def _too_large_message(max_pixels: int, size: tuple[int, int] | None = None) -> str:
    got = f" ({size[0]}x{size[1]})" if size else ""
    return f"The image is too large{got}: at most {max_pixels / 1e6:.0f} megapixels are accepted."


def _first_frame_upright(image: Image.Image) -> Image.Image:
    frame = image.tell()
    if frame != 0:
        image.seek(0)
    image.load()  # decodes now, so truncation surfaces here as OSError
    upright = ImageOps.exif_transpose(image)  # always a new image
    if frame != 0:
        image.seek(frame)  # a caller's animated image keeps its position
    return upright


def _to_rgb(image: Image.Image) -> Image.Image:
    """`image` is already a private copy (from exif_transpose), so RGB passes through."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _array_to_rgb(np.asarray(image), max_pixels=None)
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        return _flatten_alpha(image.convert("RGBA"))
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise InputImageError(f"Unsupported colour mode {image.mode!r} ({err}).") from None


def _flatten_alpha(rgba: Image.Image) -> Image.Image:
    # Transparent pixels carry arbitrary colours; white is what a viewer shows behind them.
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _array_to_rgb(array: np.ndarray, max_pixels: int | None) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InputImageError(f"Expected an HxW, HxWx3 or HxWx4 image array, got shape {array.shape}.")
    if max_pixels is not None:  # None: a decoded PIL image, already checked
        _check_size((array.shape[1], array.shape[0]), max_pixels)
    pixels = _to_uint8(array)  # always a new array
    if pixels.ndim == 2:
        return Image.fromarray(pixels, "L").convert("RGB")
    if pixels.shape[2] == 4:
        return _flatten_alpha(Image.fromarray(pixels, "RGBA"))
    return Image.fromarray(pixels, "RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.array(array, copy=True, order="C")
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind in "ui":
        # Integer data wider than 8 bits is treated as 16-bit (PNG/TIFF), the only common case.
        return np.rint(np.clip(array, 0, 65535) / 257.0).astype(np.uint8)
    if array.dtype.kind == "f":
        values = np.nan_to_num(array.astype(np.float64))
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0  # [0,1] floats or [0,255] floats
        return np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8)
    raise InputImageError(f"Unsupported image array type {array.dtype}.")
