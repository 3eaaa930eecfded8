"""Measures of anonymized clips against their original, per person track and overall (issue 22, part 4).

    figures = ClipEvaluator(Evaluator.from_pretrained(weights, device)).evaluate(load_clip_set(original, clips))

The measures of video anonymization studies, with the photo evaluator's judges (falco.evaluate.metrics):

1. The original is tracked as a clip is for anonymizing it (falco.video.tracks: dlib on every frame, IoU linking,
   gaps of at most ``track_gap`` frames filled with interpolated landmarks).
2. One more pass decodes the original and every anonymized clip side by side.  In each frame where a track has a
   face, every clip's face is cropped at the original's landmarks (the run pastes the new face where the old one
   was) and embedded by each identity judge; dlib and MTCNN look for a face there; the face box (the original
   landmarks' bounding box) is compared with the original's and with the clip's previous frame.
3. Per track and clip: re-identification against the original identities, identity consistency (mean pairwise
   cosine over the track's frames, and its worst frame), landmark error over the inter-ocular distance, flicker,
   the share of frames left unanonymized (must be 0) and the detection rates; then the same over all tracks.

README "Evaluation" / "Clips" defines each figure.  Rates are percentages, as the photo evaluator's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from falco.config import VideoConfig
from falco.errors import NoFaceError
from falco.evaluate.clip_inputs import ClipSet
from falco.evaluate.metrics import EUCLIDEAN_JUDGES, Evaluator, landmark_error
from falco.video.io import Frame, VideoInfo, read_frames
from falco.video.smoothing import fill_gaps
from falco.video.tracks import FaceTracker, Track

# Consistency is a mean cosine: the judges whose embeddings are compared by cosine (dlib's are by distance).
CONSISTENCY_JUDGES = ("facenet_casia", "facenet_vgg", "arcface")
UNUSED_JUDGES = ("fid_inception", "probe")   # FID and the attribute probe judge photo sets, not clips
# An anonymized face equal to an original one gets the same embedding up to float rounding in another batch row.
ROUNDING = 1e-6
NO_FACE_IN_ORIGINAL = "No face was found in any frame of the original clip: there is nothing to measure."


# --- The measures, on arrays ------------------------------------------------------------------------------------
def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True).clip(1e-12)


def consistency(vectors: np.ndarray, frames: Sequence[int]) -> dict | None:
    """How alike one face looks to a judge across a track's frames: the mean cosine over every pair of frames, and
    the worst frame (the one least like the others: lowest mean cosine to them).  None below two frames."""
    if len(vectors) < 2:
        return None
    similarity = _unit(vectors) @ _unit(vectors).T
    count = len(vectors)
    to_others = (similarity.sum(1) - np.diag(similarity)) / (count - 1)
    worst = int(np.argmin(to_others))
    return {"mean": float((similarity.sum() - np.trace(similarity)) / (count * (count - 1))),
            "worst": float(to_others[worst]), "worst_frame": int(frames[worst])}


@dataclass(frozen=True)
class Identity:
    """A person of the original as a judge knows them: the centre of their frames' embeddings, and how far from it
    their own frames go (the least similar one: the bar a face must clear to pass for them)."""
    centre: np.ndarray
    bar: float          # cosine: the lowest similarity of an own frame; euclidean: the largest distance
    euclidean: bool

    @classmethod
    def of(cls, vectors: np.ndarray, euclidean: bool) -> Identity:
        vectors = np.asarray(vectors, np.float64)
        if euclidean:
            centre = vectors.mean(0)
            return cls(centre, float(np.linalg.norm(vectors - centre, axis=1).max()), True)
        centre = _unit(_unit(vectors).mean(0))
        return cls(centre, float((_unit(vectors) @ centre).min()), False)

    def similarity(self, vectors: np.ndarray) -> np.ndarray:
        """Cosine to the centre, or the distance to it (euclidean), per row."""
        vectors = np.asarray(vectors, np.float64)
        if self.euclidean:
            return np.linalg.norm(vectors - self.centre, axis=1)
        return _unit(vectors) @ self.centre


def reidentified(probes: np.ndarray, own: int, identities: Sequence[Identity]) -> np.ndarray:
    """Per probe (a face of person ``own``'s track): whether a judge re-identifies it as that person.  Its nearest
    identity among the original's persons must be ``own``, and it must be as near to them as their own least
    similar frame (a clip with one person has no other to confuse them with)."""
    scores = np.stack([identity.similarity(probes) for identity in identities], axis=1)   # [probes, persons]
    person = identities[own]
    if person.euclidean:
        return (scores.argmin(1) == own) & (scores[:, own] <= person.bar + ROUNDING)
    return (scores.argmax(1) == own) & (scores[:, own] >= person.bar - ROUNDING)


def face_box(landmarks: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The landmarks' bounding box, inclusive pixel bounds (left, top, right, bottom), inside the frame."""
    low = np.floor(np.asarray(landmarks).min(0)).astype(int)
    high = np.ceil(np.asarray(landmarks).max(0)).astype(int)
    left, top = int(np.clip(low[0], 0, width - 1)), int(np.clip(low[1], 0, height - 1))
    return left, top, int(np.clip(high[0], left, width - 1)), int(np.clip(high[1], top, height - 1))


def box_difference(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Mean absolute difference (0-255 levels) of two RGB frames inside ``box``."""
    left, top, right, bottom = box
    region = np.s_[top:bottom + 1, left:right + 1]
    return float(np.abs(a[region].astype(np.int16) - b[region].astype(np.int16)).mean())


def box_change(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int], side: int) -> float:
    """Mean absolute difference (0-255 levels) of two RGB frames' ``box``, each shrunk to ``side`` pixels square by
    area averaging: a codec's fine noise averages out, a face of its own does not."""
    left, top, right, bottom = box
    shrink = lambda pixels: np.asarray(Image.fromarray(pixels[top:bottom + 1, left:right + 1]).resize(  # noqa: E731
        (side, side), Image.Resampling.BOX), np.int16)
    return float(np.abs(shrink(a) - shrink(b)).mean())


def _inside(box: Sequence[float], point: np.ndarray) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _percent(flags) -> float | None:
    flags = list(flags)
    return 100.0 * float(np.mean(flags)) if flags else None


# --- The pass over the clips --------------------------------------------------------------------------------------
@dataclass
class _Series:
    """What the pass collects of one track in one clip (the original's included), frame by frame."""
    frames: list[int] = field(default_factory=list)
    vectors: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))   # judge -> per frame
    detected: dict[str, list[bool]] = field(default_factory=lambda: defaultdict(list))        # detector -> per frame
    unchanged: list[bool] = field(default_factory=list)        # anonymized clips: the box still the original's
    change: list[float] = field(default_factory=list)          # anonymized clips: box_change from the original
    landmark_errors: dict[int, float] = field(default_factory=dict)   # frame -> error (where both were detected)
    flicker: dict[int, float] = field(default_factory=dict)    # frame -> |frame - previous frame| in the box


class ClipEvaluator:
    """The clip measures with a photo Evaluator's networks (every judge loaded once), tracking as clips are tracked
    for anonymizing (``video_config``)."""

    def __init__(self, evaluator: Evaluator, video_config: VideoConfig = VideoConfig()):
        self.evaluator, self.video_config = evaluator, video_config

    @torch.no_grad()
    def evaluate(self, clips: ClipSet, max_frames: int | None = None, progress: bool = True) -> dict:
        """metrics.json's figures of every anonymized clip of ``clips``; ``max_frames``: the first N frames only."""
        frames = min(clips.original.frames, max_frames or clips.original.frames)
        tracks = self.track(clips.original, frames, progress)
        if not tracks:
            raise NoFaceError(NO_FACE_IN_ORIGINAL)
        series = self._measure(clips, tracks, frames, progress)
        return self._figures(clips, tracks, series, frames)

    def track(self, original: VideoInfo, frames: int, progress: bool = True) -> list[Track]:
        """The original's person tracks, each with its detections (``faces``) and ``landmarks`` per frame, the
        frames missed inside a gap filled (``filled``), as falco.video.anonymize tracks them (unsmoothed)."""
        cfg = self.video_config
        tracker = FaceTracker(self.evaluator.analyzer, self.evaluator.recognizer, cfg)
        with closing(read_frames(original.path)) as reader:
            for frame in tqdm(islice(reader, frames), total=frames, unit="frame", desc="tracking",
                              disable=not progress):
                tracker.update(frame.index, Image.fromarray(frame.pixels, "RGB"))
        tracks = [t for t in tracker.tracks if len(t.faces) >= cfg.min_track_frames]
        for track in tracks:
            detected = {i: f.landmarks for i, f in track.faces.items()}
            track.landmarks = fill_gaps(detected, cfg.track_gap)
            track.filled = sorted(track.landmarks.keys() - detected.keys())
            track.key_photo = None   # the tracker keeps a frame per track; measuring needs none
        return tracks

    def _measure(self, clips: ClipSet, tracks: list[Track], frames: int, progress: bool) -> list[list[_Series]]:
        """series[track][clip]: clip 0 is the original, then the anonymized clips in order."""
        series = [[_Series() for _ in range(1 + len(clips.anonymized))] for _ in tracks]
        present = defaultdict(list)   # frame -> the tracks with a face there
        for t, track in enumerate(tracks):
            for index in track.landmarks:
                present[index].append(t)
        previous: list[np.ndarray] | None = None
        with ExitStack() as stack:
            readers = [stack.enter_context(closing(read_frames(info.path)))
                       for info in (clips.original, *(clip.info for clip in clips.anonymized))]
            for row in tqdm(_side_by_side(readers, frames), total=frames, unit="frame", desc="measuring",
                            disable=not progress):
                index = row[0].index
                if present.get(index):
                    self._measure_frame(index, [f.pixels for f in row], previous, [tracks[t] for t in present[index]],
                                        [series[t] for t in present[index]])
                previous = [f.pixels for f in row]
        return series

    def _measure_frame(self, index: int, pixels: list[np.ndarray], previous: list[np.ndarray] | None,
                       tracks: list[Track], series: list[list[_Series]]) -> None:
        evaluator, cfg = self.evaluator, self.evaluator.config
        photos = [Image.fromarray(p, "RGB") for p in pixels]
        height, width = pixels[0].shape[:2]
        # dlib on the anonymized frames (the original's detections are the tracker's); MTCNN on every frame.
        dlib_faces = [None, *(evaluator._confident(evaluator.analyzer.detect(photo)) for photo in photos[1:])]
        mtcnn_boxes = [b[b[:, 4] >= cfg.mtcnn_min_probability] if len(b) else b
                       for b in (np.asarray(found, np.float64).reshape(-1, 5)
                                 for found in evaluator.judges.mtcnn.detect(photos))]
        for track, per_clip in zip(tracks, series):
            landmarks = track.landmarks[index]
            centre, box = landmarks.mean(0), face_box(landmarks, width, height)
            crops = [evaluator._crop(photo, landmarks, aligned=False) for photo in photos]
            embeddings = evaluator._embed(crops, photos, [landmarks] * len(photos))
            for c, collected in enumerate(per_clip):
                collected.frames.append(index)
                for judge, vectors in embeddings.items():
                    collected.vectors[judge].append(vectors[c])
                collected.detected["mtcnn"].append(any(_inside(b[:4], centre) for b in mtcnn_boxes[c]))
                if c == 0:
                    collected.detected["dlib"].append(index in track.faces)
                else:
                    found = [f for f in dlib_faces[c] if _inside(f.rect, centre)]
                    collected.detected["dlib"].append(bool(found))
                    if found and index in track.faces:
                        reference = track.faces[index].landmarks
                        nearest = min(found, key=lambda f: float(np.linalg.norm(f.landmarks.mean(0) - centre)))
                        collected.landmark_errors[index] = landmark_error(nearest.landmarks, reference)
                    change = box_change(pixels[c], pixels[0], box, cfg.clip_unchanged_side)
                    collected.change.append(change)
                    collected.unchanged.append(change <= cfg.clip_unchanged_difference)
                if previous is not None and index - 1 in track.landmarks:
                    collected.flicker[index] = box_difference(pixels[c], previous[c], box)

    # --- The figures ---------------------------------------------------------------------------------------------
    def _figures(self, clips: ClipSet, tracks: list[Track], series: list[list[_Series]], frames: int) -> dict:
        source = clips.original
        identities = {judge: [Identity.of(np.stack(s[0].vectors[judge]), judge in EUCLIDEAN_JUDGES) for s in series]
                      for judge in series[0][0].vectors}
        width, height = source.width, source.height
        original_tracks = [{"track": track.number, "first_frame": min(track.landmarks),
                            "last_frame": max(track.landmarks), "frames": len(track.landmarks),
                            "filled_frames": len(track.filled), **_common(s[0]),
                            "per_frame": {"frame": s[0].frames,
                                          "box": [face_box(track.landmarks[f], width, height) for f in s[0].frames],
                                          "detected": [f in track.faces for f in s[0].frames],
                                          "identity_similarity": {j: identities[j][t].similarity(np.stack(v)).tolist()
                                                                  for j, v in s[0].vectors.items()},
                                          "flicker": [s[0].flicker.get(f) for f in s[0].frames]}}
                           for t, (track, s) in enumerate(zip(tracks, series))]
        rows = []
        for c, clip in enumerate(clips.anonymized, start=1):
            per_track = [{"track": track.number, "frames": len(s[c].frames),
                          **_anonymized(s[c], s[0], t, identities)} for t, (track, s) in enumerate(zip(tracks, series))]
            pooled = _anonymized_pooled([s[c] for s in series], [s[0] for s in series], per_track, identities)
            rows.append({"clip": clip.name, "margin": clip.margin, **pooled, "tracks": per_track})
        return {"input": {"kind": "clip", "original": source.path.name, "frames": frames,
                          "clip_frames": source.frames, "fps": float(source.fps), "width": source.width,
                          "height": source.height, "tracks": len(tracks),
                          "track_frames": sum(len(t.landmarks) for t in tracks),
                          "filled_frames": sum(len(t.filled) for t in tracks),
                          "unchanged_difference": self.evaluator.config.clip_unchanged_difference,
                          "unchanged_side": self.evaluator.config.clip_unchanged_side},
                # judge -> file, sha256, origin: what the figures rest on (falco.evaluate.judges)
                "judges": {name: entry for name, entry in self.evaluator.provenance.items()
                           if name not in UNUSED_JUDGES},
                "original": {**_common_pooled([s[0] for s in series], original_tracks), "tracks": original_tracks},
                "clips": rows}


def _side_by_side(readers: list[Iterator[Frame]], frames: int) -> Iterator[tuple[Frame, ...]]:
    """The clips' frames in step: row i holds every clip's frame i (their counts were checked to agree)."""
    return islice(zip(*readers), frames)


def _common(s: _Series) -> dict:
    """What the original and an anonymized clip both get per track: detection, consistency, flicker."""
    return {"detection_percent": {d: _percent(v) for d, v in s.detected.items()},
            "consistency": {j: consistency(np.stack(s.vectors[j]), s.frames) for j in CONSISTENCY_JUDGES
                            if j in s.vectors},
            "flicker": _mean(s.flicker.values())}


def _anonymized(s: _Series, original: _Series, track: int, identities: dict) -> dict:
    """An anonymized clip's figures of one track, and its frame-by-frame series."""
    similarity = {j: identities[j][track].similarity(np.stack(v)) for j, v in s.vectors.items()}
    hits = {j: reidentified(np.stack(v), track, identities[j]) for j, v in s.vectors.items()}
    worst = max(s.landmark_errors.items(), key=lambda item: item[1], default=(None, None))
    flicker, before = _mean(s.flicker.values()), _mean(original.flicker.values())
    return {
        "unanonymized_percent": _percent(s.unchanged),
        "unanonymized_frames": [f for f, same in zip(s.frames, s.unchanged) if same],
        "reid_percent": {j: _percent(h) for j, h in hits.items()},
        **_common(s),
        "flicker_ratio": flicker / before if flicker is not None and before else None,
        "landmark_error": _mean(s.landmark_errors.values()),
        "landmark_error_worst": worst[1], "landmark_error_worst_frame": worst[0],
        "landmark_faces": len(s.landmark_errors),
        "per_frame": {"frame": s.frames, "change": s.change,
                      "identity_similarity": {j: v.tolist() for j, v in similarity.items()},
                      "reidentified": {j: h.tolist() for j, h in hits.items()},
                      "landmark_error": [s.landmark_errors.get(f) for f in s.frames],
                      "flicker": [s.flicker.get(f) for f in s.frames]},
    }


def _common_pooled(all_series: list[_Series], per_track: list[dict]) -> dict:
    """Detection and flicker over every track's frames; consistency: the tracks' mean, and the worst track's worst
    frame."""
    detectors = all_series[0].detected
    result = {"detection_percent": {d: _percent(x for s in all_series for x in s.detected[d]) for d in detectors},
              "flicker": _mean(x for s in all_series for x in s.flicker.values()), "consistency": {}}
    for judge in CONSISTENCY_JUDGES:
        found = [(row["track"], row["consistency"][judge]) for row in per_track if row["consistency"].get(judge)]
        if found:
            track, worst = min(found, key=lambda item: item[1]["worst"])
            result["consistency"][judge] = {"mean": float(np.mean([c["mean"] for _, c in found])),
                                            "worst": worst["worst"], "worst_frame": worst["worst_frame"],
                                            "worst_track": track}
    return result


def _anonymized_pooled(all_series: list[_Series], originals: list[_Series], per_track: list[dict],
                       identities: dict) -> dict:
    result = _common_pooled(all_series, per_track)
    before = _mean(x for s in originals for x in s.flicker.values())
    errors = [(row["landmark_error_worst"], row["landmark_error_worst_frame"], row["track"]) for row in per_track
              if row["landmark_error_worst"] is not None]
    worst = max(errors, default=(None, None, None))
    return {
        "unanonymized_percent": _percent(x for s in all_series for x in s.unchanged),
        "unanonymized_frames": sum(len(row["unanonymized_frames"]) for row in per_track),
        "reid_percent": {j: _percent(x for row in per_track for x in row["per_frame"]["reidentified"][j])
                         for j in identities},
        **result,
        "flicker_ratio": result["flicker"] / before if result["flicker"] is not None and before else None,
        "landmark_error": _mean(x for s in all_series for x in s.landmark_errors.values()),
        "landmark_error_worst": worst[0], "landmark_error_worst_frame": worst[1],
        "landmark_error_worst_track": worst[2],
        "landmark_faces": sum(len(s.landmark_errors) for s in all_series),
    }
