"""Face detection (dlib HOG, or its CNN as an option) and 68-point landmarks."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

from ..config import FaceConfig
from ..errors import NoFaceError, WeightsError
from .align import AlignedFace, alignment_offset, crop_square, ffhq_quad, photo_to_quad

# dlib detectors and predictors are not thread-safe and loaded models are shared between
# analyzers, so every dlib call holds this lock (a Gradio app may serve requests at once).
_DLIB_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class DetectedFace:
    rect: tuple[int, int, int, int]  # left, top, right, bottom in photo pixels (dlib: inclusive)
    score: float                     # detector confidence (HOG margin or CNN confidence)
    landmarks: np.ndarray            # [68, 2] dlib landmarks in photo pixels
    quad: np.ndarray                 # [4, 2] FFHQ crop square (UL, LL, LR, UR)
    usable: bool                     # worth anonymizing: a confident detection, large enough
    reason: str | None = None        # why not usable

    @property
    def crop_size(self) -> float:
        """Side of the FFHQ crop in photo pixels: the face's scale."""
        return float(np.hypot(*(self.quad[3] - self.quad[0])))

    @property
    def area(self) -> int:
        left, top, right, bottom = self.rect
        return (right - left + 1) * (bottom - top + 1)


class FaceAnalyzer:
    """Finds every face of a photo, usable ones first, largest first, with landmarks and FFHQ quad."""

    def __init__(self, landmarks_model_path: str | Path, config: FaceConfig | None = None,
                 cnn_detector_path: str | Path | None = None):
        self.config = config or FaceConfig()
        if self.config.use_cnn_detector and cnn_detector_path is None:
            raise WeightsError("The CNN face detector was requested but no model file "
                               "(mmod_human_face_detector.dat) was given.")
        self._predictor = _load_dlib_model("shape_predictor", str(landmarks_model_path))
        if self.config.use_cnn_detector:
            self._cnn = _load_dlib_model("cnn_face_detection_model_v1", str(cnn_detector_path))
        else:
            self._hog = _frontal_detector()

    def detect(self, photo: Image.Image) -> list[DetectedFace]:
        """All faces of an RGB photo (as from load_photo): usable ones first, each group largest first."""
        if not isinstance(photo, Image.Image) or photo.mode != "RGB":
            raise TypeError("detect() takes an RGB PIL image; pass the upload through load_photo() first")
        scan_size, upsample = self._scan_plan(photo.size)
        scan = photo if scan_size == photo.size else photo.resize(scan_size, Image.Resampling.BILINEAR)
        sx, sy = photo.width / scan_size[0], photo.height / scan_size[1]
        pixels = np.asarray(photo)
        with _DLIB_LOCK:
            found = self._run_detector(np.asarray(scan), upsample)
            faces = [self._describe(pixels, _scale_rect(rect, sx, sy), score) for rect, score in found]
        return sorted(faces, key=lambda f: (not f.usable, -f.area, -f.score))

    def describe(self, photo: Image.Image, rect: tuple[int, int, int, int], score: float) -> DetectedFace:
        """The face in ``rect`` (left, top, right, bottom) of an RGB photo, without detecting: landmarks and
        quad, as ``detect`` reports them.  A video tracker's box between two detections comes in here."""
        with _DLIB_LOCK:
            return self._describe(np.asarray(photo), rect, score)

    def as_aligned_face(self, photo: Image.Image) -> tuple[AlignedFace, float | None]:
        """An RGB photo given as an FFHQ-aligned crop (FFHQ, CelebA-HQ), as the face itself at ``aligned_size``,
        and how far it lies from the FFHQ crop of the face dlib finds on it (``alignment_offset``; None with its
        landmarks, when dlib finds no face).  dlib scans a copy of at most ``aligned_check_size``: an aligned face
        fills the crop, and a smaller scan finds it as well, faster."""
        config = self.config
        scale = min(config.aligned_check_size / max(photo.size), 1.0)
        small = photo.resize((max(round(photo.width * scale), 1), max(round(photo.height * scale), 1)),
                             Image.Resampling.BILINEAR) if scale < 1 else photo
        found = self.detect(small)   # usable faces first, largest first
        square, size = crop_square(*photo.size), config.aligned_size
        landmarks, offset = None, None
        if found:
            in_photo = (found[0].landmarks + 0.5) * [photo.width / small.width, photo.height / small.height] - 0.5
            offset = alignment_offset(in_photo, photo.size)
            landmarks = photo_to_quad(square, size, in_photo)
        image = photo if photo.size == (size, size) else photo.resize((size, size), Image.Resampling.LANCZOS)
        return AlignedFace(image, square, landmarks, photo.size, padded=False), offset

    def _scan_plan(self, size: tuple[int, int]) -> tuple[tuple[int, int], int]:
        """Resolution to scan at and dlib upsampling steps, bounded by detect_max_side (the CNN's:
        cnn_detect_max_side).  Within the bound this is the reference scan: full resolution, upsample."""
        cfg = self.config
        max_side = cfg.cnn_detect_max_side if cfg.use_cnn_detector else cfg.detect_max_side
        long_side = max(size)
        if long_side * 2 ** cfg.upsample <= max_side:
            return size, cfg.upsample
        # Resizing straight to the cap beats downscaling then letting dlib upsample again.
        scale = max_side / long_side
        return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))), 0

    def _run_detector(self, pixels: np.ndarray, upsample: int) -> list[tuple[tuple[float, ...], float]]:
        if self.config.use_cnn_detector:
            return [(_ltrb(d.rect), float(d.confidence)) for d in self._cnn(pixels, upsample)]
        rects, scores, _ = self._hog.run(pixels, upsample, 0.0)
        return [(_ltrb(r), float(s)) for r, s in zip(rects, scores)]

    def _describe(self, pixels: np.ndarray, rect: tuple[int, int, int, int], score: float) -> DetectedFace:
        shape = self._predictor(pixels, dlib.rectangle(*rect))
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        quad = ffhq_quad(landmarks)
        crop_size = float(np.hypot(*(quad[3] - quad[0])))
        cfg = self.config
        reason = None
        if score < cfg.min_detector_score:
            reason = f"weak detection (score {score:.2f} < {cfg.min_detector_score:.2f}): probably not a face"
        elif crop_size < cfg.min_face_size:
            reason = f"face too small ({crop_size:.0f} px crop < {cfg.min_face_size} px)"
        return DetectedFace(rect=rect, score=score, landmarks=landmarks, quad=quad,
                            usable=reason is None, reason=reason)


NO_FACE_MESSAGE = "No face was found in the photo. Faces should be roughly frontal and at least about 40 pixels wide."


def require_usable(faces: list[DetectedFace]) -> list[int]:
    """Indices of the usable faces; NoFaceError (saying why) when there are none."""
    usable = [i for i, face in enumerate(faces) if face.usable]
    if usable:
        return usable
    if not faces:
        raise NoFaceError(NO_FACE_MESSAGE)
    # Numbered from 1, as the page and the API number faces.
    reasons = "; ".join(f"face {i}: {face.reason}" for i, face in enumerate(faces, start=1))
    raise NoFaceError(f"No face in the photo can be anonymized ({reasons}).")


def _ltrb(rect) -> tuple[int, int, int, int]:
    return rect.left(), rect.top(), rect.right(), rect.bottom()


def _scale_rect(rect: tuple[int, ...], sx: float, sy: float) -> tuple[int, int, int, int]:
    """Scan pixels -> photo pixels (pixel centres map through (i + 0.5) * s - 0.5)."""
    left, top, right, bottom = rect
    if sx == sy == 1.0:
        return left, top, right, bottom
    return (round((left + 0.5) * sx - 0.5), round((top + 0.5) * sy - 0.5),
            round((right + 0.5) * sx - 0.5), round((bottom + 0.5) * sy - 0.5))


@lru_cache(maxsize=1)  # building the HOG detector takes ~1 s
def _frontal_detector():
    with _DLIB_LOCK:
        return dlib.get_frontal_face_detector()


_MODEL_NAMES = {"shape_predictor": "68-point landmark", "cnn_face_detection_model_v1": "CNN face detector"}


@lru_cache(maxsize=4)  # the landmark model takes a second or more to load; analyzers share it
def _load_dlib_model(loader: str, path: str):
    what = _MODEL_NAMES[loader]
    if not Path(path).is_file():
        raise WeightsError(f"The dlib {what} model is missing: no file at {path}.")
    try:
        with _DLIB_LOCK:
            return getattr(dlib, loader)(path)
    except RuntimeError as err:
        raise WeightsError(f"The dlib {what} model at {path} cannot be read ({err}).") from None
