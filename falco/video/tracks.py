"""Faces of a clip linked into tracks: one track per person.

Faces are detected (every ``detect_every``-th frame; between two detections dlib's correlation
tracker follows each box and the landmark model runs in it) and a face continues the track whose
last box it overlaps most (IoU, greedy, best pairs first).  A face that continues no track is
compared by dlib's recogniser with the tracks not seen in this frame: a person who left and comes
back rejoins their track; anyone else starts a new one.  Each track keeps its best key frame
(large, frontal, sharp), on which the person's new identity is optimised once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dlib
import numpy as np
from PIL import Image

from falco.config import VideoConfig
from falco.faces import DetectedFace, FaceAnalyzer
from falco.faces.recognize import FaceRecognizer


@dataclass(eq=False)
class Track:
    number: int                                   # counts from 1, in order of first appearance
    faces: dict[int, DetectedFace] = field(default_factory=dict)   # frame index -> face
    descriptor: np.ndarray | None = None          # dlib's 128-d descriptor, from the first face
    key_frame: int = -1
    key_score: float = -1.0
    key_photo: Image.Image | None = None          # the key frame itself, kept for the optimisation
    landmarks: dict[int, np.ndarray] = field(default_factory=dict)   # smoothed, frame index -> [68, 2]
    filled: list[int] = field(default_factory=list)   # frames missed inside the track, landmarks interpolated

    @property
    def last_frame(self) -> int:
        return max(self.faces)

    @property
    def key_face(self) -> DetectedFace:
        return self.faces[self.key_frame]


def iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection over union of two inclusive (left, top, right, bottom) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0]) + 1
    height = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def key_frame_score(photo: np.ndarray, face: DetectedFace) -> float:
    """Large, frontal and sharp score high: crop side x left/right symmetry of the nose x sharpness.

    Sharpness is the variance of the Laplacian of the face box at a fixed 64 px, so it does not grow
    with the face's size; it saturates (x / (x + 100)) so that noise does not win over pose."""
    lm = face.landmarks
    left, right = np.hypot(*(lm[30] - lm[2])), np.hypot(*(lm[30] - lm[14]))
    symmetry = min(left, right) / max(left, right, 1e-6)
    x0, y0, x1, y1 = face.rect
    h, w = photo.shape[:2]
    box = photo[max(y0, 0):min(y1 + 1, h), max(x0, 0):min(x1 + 1, w)]
    if box.size == 0:
        return 0.0
    gray = np.asarray(Image.fromarray(box).convert("L").resize((64, 64), Image.Resampling.BILINEAR), np.float64)
    laplacian = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    sharpness = laplacian.var()
    return face.crop_size * symmetry * sharpness / (sharpness + 100.0)


class FaceTracker:
    """Feed it every frame in order (``update``); ``tracks`` then holds one Track per person."""

    def __init__(self, analyzer: FaceAnalyzer, recognizer: FaceRecognizer, config: VideoConfig = VideoConfig()):
        self.analyzer, self.recognizer, self.config = analyzer, recognizer, config
        self.tracks: list[Track] = []
        self._followers: dict[int, dlib.correlation_tracker] = {}   # track number -> box follower

    def update(self, index: int, photo: Image.Image) -> list[tuple[Track, DetectedFace]]:
        """The usable faces of frame ``index`` (an RGB photo), each in its track."""
        pixels = np.asarray(photo)
        detecting = index % max(self.config.detect_every, 1) == 0
        faces = [f for f in self.analyzer.detect(photo) if f.usable] if detecting else self._follow(photo, pixels)
        placed = self._link(index, photo, faces)
        if detecting:
            self._followers.clear()   # a face no longer detected is no longer followed
        for track, face in placed:
            track.faces[index] = face
            score = key_frame_score(pixels, face)
            if score > track.key_score:
                track.key_frame, track.key_score, track.key_photo = index, score, photo
            if detecting and self.config.detect_every > 1:
                follower = dlib.correlation_tracker()
                follower.start_track(pixels, dlib.rectangle(*face.rect))
                self._followers[track.number] = follower
        return placed

    def _follow(self, photo: Image.Image, pixels: np.ndarray) -> list[DetectedFace]:
        faces = []
        for number, follower in self._followers.items():
            track = self.tracks[number - 1]
            follower.update(pixels)
            box = follower.get_position()
            rect = (round(box.left()), round(box.top()), round(box.right()), round(box.bottom()))
            face = self.analyzer.describe(photo, rect, track.faces[track.last_frame].score)
            if face.usable:
                faces.append(face)
        return faces

    def _link(self, index: int, photo: Image.Image, faces: list[DetectedFace]) -> list[tuple[Track, DetectedFace]]:
        cfg = self.config
        recent = [t for t in self.tracks if index - t.last_frame <= cfg.track_gap]
        pairs = sorted(((iou(face.rect, t.faces[t.last_frame].rect), i, t) for i, face in enumerate(faces)
                        for t in recent), key=lambda p: -p[0])
        placed: dict[int, Track] = {}
        for overlap, i, track in pairs:
            if overlap < cfg.link_iou:
                break
            if i not in placed and track not in placed.values():
                placed[i] = track
        for i, face in enumerate(faces):
            if i in placed:
                continue
            descriptor = self.recognizer.descriptor(photo, face.landmarks)
            absent = [t for t in self.tracks if t not in placed.values() and index not in t.faces]
            distances = [(float(np.linalg.norm(descriptor - t.descriptor)), t.number, t) for t in absent]
            near = min(distances, default=None, key=lambda d: d[:2])
            if near is not None and near[0] < cfg.rejoin_distance:
                placed[i] = near[2]
            else:
                track = Track(number=len(self.tracks) + 1, descriptor=descriptor)
                self.tracks.append(track)
                placed[i] = track
        return [(placed[i], face) for i, face in enumerate(faces)]
