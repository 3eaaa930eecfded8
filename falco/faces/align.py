"""FFHQ alignment (the procedure of NVlabs/ffhq-dataset's recreate_aligned_images).

Coordinates follow dlib: pixel centres sit on integers.  The aligned square of side S maps
to the photo through the quad (UL, LL, LR, UR corners): aligned pixel (u, v) has its centre
at  quad[0] + (u + 0.5) / S * (quad[3] - quad[0]) + (v + 0.5) / S * (quad[1] - quad[0]).
FFHQ quads are squares, so this map is a similarity and its inverse is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..config import FaceConfig

_LANCZOS = Image.Resampling.LANCZOS


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The oriented FFHQ crop square [4, 2] (UL, LL, LR, UR) from 68 dlib landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    # x: the eye line tilted by the eye-to-mouth direction; y: x turned 90 degrees.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    center = eye_avg + eye_to_mouth * 0.1
    return np.stack([center - x - y, center - x + y, center + x + y, center + x - y])


def crop_square(width: int, height: int) -> np.ndarray:
    """The quad [4, 2] (UL, LL, LR, UR) of a whole image taken as its own aligned crop: aligned pixel (u, v)
    is the image's pixel (u, v) when the sides match."""
    return np.array([[-0.5, -0.5], [-0.5, height - 0.5], [width - 0.5, height - 0.5], [width - 0.5, -0.5]])


def alignment_offset(landmarks: np.ndarray, size: tuple[int, int]) -> float:
    """How far an image of ``size`` (width, height) is from the FFHQ crop of the face at ``landmarks`` (its
    pixels): the largest distance from a corner of the face's FFHQ quad to the image's own corner, as a fraction
    of the image's side.  The FFHQ template is where alignment puts a face: it maps the quad onto the crop, so an
    FFHQ crop's own landmarks give back its square (0), up to the landmarks' noise."""
    corners = ffhq_quad(landmarks) - crop_square(*size)
    return float(np.hypot(corners[:, 0], corners[:, 1]).max() / np.mean(size))


@dataclass(frozen=True, eq=False)
class AlignedFace:
    image: Image.Image            # S x S RGB, FFHQ-aligned
    quad: np.ndarray              # [4, 2] the square's corners in the photo (UL, LL, LR, UR)
    landmarks: np.ndarray | None  # [68, 2] the face's landmarks in aligned pixels; None: an aligned input
                                  # (``FalcoPipeline.anonymize(aligned=True)``) on which dlib found no face
    photo_size: tuple[int, int]   # (width, height) of the photo it came from
    padded: bool                  # the quad left the photo and the blur-padding branch ran

    @property
    def size(self) -> int:
        return self.image.width

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """Aligned pixel coordinates [..., 2] -> photo pixel coordinates."""
        return quad_to_photo(self.quad, self.size, points)

    def to_aligned(self, points: np.ndarray) -> np.ndarray:
        """Photo pixel coordinates [..., 2] -> aligned pixel coordinates."""
        return photo_to_quad(self.quad, self.size, points)


def quad_to_photo(quad: np.ndarray, size: int, points: np.ndarray) -> np.ndarray:
    axes = np.stack([quad[3] - quad[0], quad[1] - quad[0]])  # rows: aligned u and v directions
    return quad[0] + ((np.asarray(points, np.float64) + 0.5) / size) @ axes


def photo_to_quad(quad: np.ndarray, size: int, points: np.ndarray) -> np.ndarray:
    axes = np.stack([quad[3] - quad[0], quad[1] - quad[0]])
    return (np.asarray(points, np.float64) - quad[0]) @ np.linalg.inv(axes) * size - 0.5


def align_face(photo: Image.Image, landmarks: np.ndarray, size: int | None = None,
               config: FaceConfig | None = None) -> AlignedFace:
    """FFHQ-align the face at ``landmarks`` ([68, 2] dlib landmarks in photo pixels: a DetectedFace's, a track's)
    to a size x size RGB crop."""
    if photo.mode != "RGB":
        raise TypeError("align_face() takes an RGB PIL image; pass the upload through load_photo() first")
    config = config or FaceConfig()
    size = size or config.aligned_size
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"align_face() takes [68, 2] landmarks (a DetectedFace's .landmarks), not {landmarks.shape}")
    quad = ffhq_quad(landmarks)
    q = quad.copy()
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    width, height = photo.size

    # Shrink: a face far bigger than the output is first downscaled (antialiased), at
    # integer factors as FFHQ does.  Only the crop region is resampled, through `box`,
    # which gives the same pixels as resizing the whole photo and cropping.
    shrink = int(np.floor(qsize / size * 0.5))
    scale = (1.0, 1.0)
    if shrink > 1:
        shrunk = (int(np.rint(width / shrink)), int(np.rint(height / shrink)))
        scale = (width / shrunk[0], height / shrunk[1])
        q /= shrink
        qsize /= shrink
        width, height = shrunk

    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (max(int(np.floor(q[:, 0].min())) - border, 0), max(int(np.floor(q[:, 1].min())) - border, 0),
            min(int(np.ceil(q[:, 0].max())) + border, width), min(int(np.ceil(q[:, 1].max())) + border, height))
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
        raise ValueError("the face's crop lies entirely outside the photo")
    crop_size = (crop[2] - crop[0], crop[3] - crop[1])
    if shrink > 1:
        box = (crop[0] * scale[0], crop[1] * scale[1], crop[2] * scale[0], crop[3] * scale[1])
        image = photo.resize(crop_size, _LANCZOS, box=box)
    elif crop_size != (width, height):
        image = photo.crop(crop)
    else:
        image = photo
    q -= crop[:2]

    pad = (max(-int(np.floor(q[:, 0].min())) + border, 0), max(-int(np.floor(q[:, 1].min())) + border, 0),
           max(int(np.ceil(q[:, 0].max())) - crop_size[0] + border, 0),
           max(int(np.ceil(q[:, 1].max())) - crop_size[1] + border, 0))
    padded = max(pad) > border - 4
    if padded:
        pad = tuple(max(p, int(np.rint(qsize * 0.3))) for p in pad)
        image = blur_pad(image, pad, blur=qsize * 0.02)
        q += pad[:2]

    oversample = config.transform_oversample or min(max(int(np.ceil(qsize / size)), 1), 4)
    transform_size = size * oversample
    image = image.transform((transform_size, transform_size), Image.Transform.QUAD,
                            tuple((q + 0.5).flatten()), Image.Resampling.BILINEAR)
    if transform_size > size:
        image = image.resize((size, size), _LANCZOS)
    return AlignedFace(image=image, quad=quad, landmarks=photo_to_quad(quad, size, landmarks),
                       photo_size=photo.size, padded=padded)


def blur_pad(image: Image.Image, pad: tuple[int, int, int, int], blur: float) -> Image.Image:
    """Reflect-pad by (left, top, right, bottom), blurring and fading to the median towards the
    new edges, so that the network sees plausible surroundings instead of a mirror copy."""
    left, top, right, bottom = pad
    pixels = np.asarray(image)
    height, width = pixels.shape[0] + top + bottom, pixels.shape[1] + left + right
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    # 1 at the outer edge, 0 at the photo's edge, negative inside; separable in x and y.
    fade_x = 1.0 - np.minimum(xs / left, (width - 1 - xs) / right)
    fade_y = 1.0 - np.minimum(ys / top, (height - 1 - ys) / bottom)
    fade = np.maximum(fade_x[None, :], fade_y[:, None])
    blur_weight = np.clip(fade * 3.0 + 1.0, 0.0, 1.0)
    median_weight = np.clip(fade, 0.0, 1.0)
    out = np.empty((height, width, 3), np.uint8)
    for c in range(3):  # one channel at a time bounds the float working set
        channel = np.pad(pixels[:, :, c].astype(np.float32), ((top, bottom), (left, right)), mode="reflect")
        channel += (gaussian_blur(channel, blur) - channel) * blur_weight
        channel += (np.median(channel) - channel) * median_weight
        out[:, :, c] = np.clip(np.rint(channel), 0, 255)
    return Image.fromarray(out, "RGB")


def gaussian_blur(channel: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter of a float32 image (mirrored edges, 4-sigma kernel, as scipy.ndimage).

    A large sigma runs on a copy box-reduced by an integer factor and is upsampled
    bicubically: the result is smooth at that scale, so this costs O(pixels) instead of
    O(pixels * sigma) and stays within ~0.15 grey levels of the direct filter.  The mirror
    margin is added before reducing so that edges see the same reflection."""
    factor = max(1, int(sigma // 4))
    if factor == 1:
        return _separable_gaussian(channel, sigma)
    height, width = channel.shape
    margin = -(-int(4.0 * sigma + 0.5) // factor) * factor  # whole reduced pixels
    extended = np.pad(channel, ((margin, margin + (-height) % factor), (margin, margin + (-width) % factor)),
                      mode="symmetric")
    reduced = np.asarray(Image.fromarray(extended, "F").reduce(factor))
    # The box average already blurred by (factor**2 - 1) / 12 in variance.
    residual = np.sqrt(sigma ** 2 - (factor ** 2 - 1) / 12.0) / factor
    blurred = _separable_gaussian(reduced, residual)
    m = margin / factor
    box = (m, m, m + width / factor, m + height / factor)
    return np.asarray(Image.fromarray(blurred, "F").resize((width, height), Image.Resampling.BICUBIC, box=box))


def _separable_gaussian(channel: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)
    if radius == 0:
        return channel.copy()
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = channel
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="symmetric")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, tap in enumerate(taps):
            acc += tap * (padded[k:k + n] if axis == 0 else padded[:, k:k + n])
        out = acc
    return out
