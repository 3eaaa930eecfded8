"""dlib's ResNet face recogniser: an identity judge independent of ArcFace, the loss's own judge."""

from __future__ import annotations

import threading

import dlib
import numpy as np
from PIL import Image

from falco.errors import WeightsError


class FaceRecognizer:
    """dlib's ResNet face recogniser: an identity judge independent of ArcFace."""

    def __init__(self, model_path):
        try:
            self._model = dlib.face_recognition_model_v1(str(model_path))
        except RuntimeError as err:
            raise WeightsError(f"{model_path} is not a dlib face recognition model ({err}).") from err
        self._lock = threading.Lock()   # dlib models are not thread-safe

    def descriptor(self, image: Image.Image, landmarks: np.ndarray) -> np.ndarray:
        """128-d descriptor of the face at ``landmarks`` [68, 2] (image pixels)."""
        points = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in landmarks])
        left, top = np.floor(landmarks.min(0)).astype(int)
        right, bottom = np.ceil(landmarks.max(0)).astype(int)
        shape = dlib.full_object_detection(dlib.rectangle(left, top, right, bottom), points)
        with self._lock:
            return np.array(self._model.compute_face_descriptor(np.asarray(image.convert("RGB")), shape))

    def distance(self, original: Image.Image, other: Image.Image, landmarks: np.ndarray) -> float:
        # Both crops are FFHQ-aligned (StyleGAN2 renders faces at the canonical place and
        # the attribute loss keeps the pose), so the original's landmarks locate both faces.
        return float(np.linalg.norm(self.descriptor(original, landmarks) - self.descriptor(other, landmarks)))
