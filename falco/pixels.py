"""Images between PIL and tensors: [B, 3, H, W] in [-1, 1] on the networks' side, RGB PIL on the user's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] on the host, in one copy."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def to_image(x: torch.Tensor, size: int | None = None) -> Image.Image:
    """[3, H, W] in [-1, 1] -> RGB PIL, resized to size x size when given."""
    image = Image.fromarray(to_pixels(x[None])[0], "RGB")
    if size is not None and image.width != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image


def preview_images(images: torch.Tensor, size: int) -> list[Image.Image]:
    """[B, 3, R, R] -> B RGB PIL images of at most size x size, shrunk where the images are (on the GPU:
    a 256 preview crosses to the host instead of the 1024 image, and PIL does no resampling)."""
    images = images.detach().float()
    if images.shape[-1] > size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return [Image.fromarray(p, "RGB") for p in to_pixels(images)]


def to_tensor(images: Sequence[Image.Image], device: torch.device, size: int | None = None) -> torch.Tensor:
    """RGB PIL images -> [B, 3, S, S] in [-1, 1]; resized (bilinear, as e4e's transform) when size is given."""
    if size is not None:
        images = [im if im.width == size else im.resize((size, size), Image.Resampling.BILINEAR) for im in images]
    array = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
