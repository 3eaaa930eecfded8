"""Paste aligned results back into the photo through the inverse of the FFHQ alignment.

Only the face region is replaced: a mask from the landmark hull (grown over the forehead,
dilated, feathered) in the aligned frame is warped with the result, and every photo pixel
where the warped mask is 0 keeps its exact input bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..config import FaceConfig
from .align import AlignedFace

_LANCZOS = Image.Resampling.LANCZOS


def paste_faces(photo: Image.Image, results: Sequence[tuple[AlignedFace, Image.Image]],
                config: FaceConfig | None = None) -> Image.Image:
    """A copy of `photo` with each (aligned face, square result image) blended in, in order."""
    out = np.array(photo if photo.mode == "RGB" else photo.convert("RGB"))  # a copy: the input stays
    paste_into(out, results, config)
    return Image.fromarray(out, "RGB")


def paste_into(pixels: np.ndarray, results: Sequence[tuple[AlignedFace, Image.Image]],
               config: FaceConfig | None = None) -> np.ndarray:
    """``paste_faces`` into ``pixels`` [H, W, 3] uint8 RGB itself (a clip's frames are arrays already, and go out
    as arrays): returns it."""
    config = config or FaceConfig()
    size = (pixels.shape[1], pixels.shape[0])
    for aligned, result in results:
        if aligned.photo_size != size:
            raise ValueError(f"face aligned from a {aligned.photo_size} photo, pasting into {size}")
        if result.width != result.height:
            raise ValueError(f"results must be square, got {result.size}")
        _paste_one(pixels, aligned, result.convert("RGB"), config)
    return pixels


def face_mask(aligned: AlignedFace, size: int, config: FaceConfig | None = None) -> Image.Image:
    """Feathered face-region mask (mode L) in the aligned frame, at size x size."""
    config = config or FaceConfig()
    lm = (aligned.landmarks + 0.5) * (size / aligned.size) - 0.5
    eye_avg = lm[36:48].mean(0)
    mouth_avg = (lm[48] + lm[54]) * 0.5
    # The 68 points stop at the eyebrows; the anonymized face also changes the forehead.
    forehead = lm[17:27] + (eye_avg - mouth_avg) * config.paste_forehead
    hull = _convex_hull(np.concatenate([lm, forehead]))
    radius = config.paste_dilate * size
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    points = [tuple(p) for p in hull]
    draw.polygon(points, fill=255)
    # Polygon + thick edges + round corners = the hull dilated by `radius`.
    for a, b in zip(points, points[1:] + points[:1]):
        draw.line([a, b], fill=255, width=max(1, round(2 * radius)))
    for x, y in points:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    return mask.filter(ImageFilter.GaussianBlur(config.paste_feather * size))


def _paste_one(out: np.ndarray, aligned: AlignedFace, result: Image.Image, config: FaceConfig) -> None:
    quad = aligned.quad
    # Warp from a copy near the face's size in the photo: bilinear sampling alone would
    # alias when a 1024 result shrinks onto a small face.
    side = float(np.hypot(*(quad[3] - quad[0])))
    work = int(min(result.width, max(np.ceil(side), 16)))
    if work != result.width:
        result = result.resize((work, work), _LANCZOS)
    mask = face_mask(aligned, work, config)

    height, width = out.shape[:2]
    x0, y0 = max(int(np.floor(quad[:, 0].min())) - 1, 0), max(int(np.floor(quad[:, 1].min())) - 1, 0)
    x1, y1 = min(int(np.ceil(quad[:, 0].max())) + 2, width), min(int(np.ceil(quad[:, 1].max())) + 2, height)
    if x1 <= x0 or y1 <= y0:
        return
    # PIL samples the source at A @ (x + 0.5, y + 0.5) + c for output pixel (x, y); with the
    # alignment map photo = quad[0] + axes^T (aligned + 0.5) / work this is its inverse.
    axes = np.stack([quad[3] - quad[0], quad[1] - quad[0]])
    matrix = work * np.linalg.inv(axes).T
    offset = matrix @ (np.array([x0, y0], np.float64) - 0.5 - quad[0])
    data = (matrix[0, 0], matrix[0, 1], offset[0], matrix[1, 0], matrix[1, 1], offset[1])
    box = (x1 - x0, y1 - y0)
    rgb = result.transform(box, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    alpha = mask.transform(box, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=0)

    weight = np.asarray(alpha, np.float32)[:, :, None] / 255.0
    region = out[y0:y1, x0:x1]
    blended = np.rint(region * (1.0 - weight) + np.asarray(rgb, np.float32) * weight).astype(np.uint8)
    inside = weight[:, :, 0] > 0
    region[inside] = blended[inside]


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; counter-clockwise hull vertices."""
    pts = sorted(map(tuple, np.asarray(points, np.float64)))

    def half(seq):
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.array(half(pts) + half(reversed(pts)))


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
