"""The paper's measures of a run: image quality, face detection, re-identification, attribute preservation.

    evaluator = Evaluator.from_pretrained(weights, device)     # every network loads once
    figures = evaluator.evaluate(load_evaluation_set(originals, anonymized))

``figures`` is what metrics.json holds: a row per method and m (``margins``), the originals' figures, what the
input was, the runs' settings and every judge's provenance.  Rates are percentages (as the paper prints them); the
attribute accuracy is a fraction (as the paper's).  README "Evaluation" defines each measure and the re-ID protocol.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from falco.config import EvaluationConfig, FaceConfig
from falco.device import resolve_device
from falco.evaluate.data import EvaluationSet, ImageLoader, Original
from falco.faces import DetectedFace, FaceAnalyzer, align_face
from falco.faces.recognize import FaceRecognizer
from falco.models.arcface import ArcFace, identity_preprocess
from falco.pixels import to_tensor

# Identity judges, in the table's order: FaceNet as the paper's "CASIA" and "VGG" columns, then ArcFace (the loss's
# own judge, so not independent) and dlib's recogniser.
IDENTITY_JUDGES = ("facenet_casia", "facenet_vgg", "arcface", "dlib")
# dlib's descriptors are compared by Euclidean distance (its 0.6 rule); the others are unit vectors, by cosine.
EUCLIDEAN_JUDGES = ("dlib",)
OUTER_EYE_CORNERS = (36, 45)   # dlib's 68 points: the inter-ocular distance of the 300-W benchmark
ORIGINAL = "original"           # the originals' row among the m values


# --- The measures, on arrays ------------------------------------------------------------------------------------
def nearest_match_rate(gallery: np.ndarray, gallery_labels: Sequence, probes: np.ndarray, probe_labels: Sequence,
                       euclidean: bool = False) -> float:
    """% of probes whose nearest gallery row (highest cosine, or smallest distance) carries the probe's label."""
    gallery, probes = np.asarray(gallery, np.float64), np.asarray(probes, np.float64)
    if not len(probes) or not len(gallery):
        return float("nan")
    if euclidean:
        nearest = ((probes[:, None, :] - gallery[None, :, :]) ** 2).sum(-1).argmin(1)
    else:
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)   # noqa: E731
        nearest = (unit(probes) @ unit(gallery).T).argmax(1)
    hits = [gallery_labels[j] == label for j, label in zip(nearest, probe_labels)]
    return 100.0 * float(np.mean(hits))


def chance_rate(gallery_labels: Sequence, probe_labels: Sequence) -> float:
    """% of probes a judge blind to faces re-identifies: its nearest original is drawn at random from the
    gallery, so a probe hits with the share of the gallery that carries its label (1 / originals without
    identity labels)."""
    if not len(gallery_labels) or not len(probe_labels):
        return float("nan")
    counts = defaultdict(int)
    for label in gallery_labels:
        counts[label] += 1
    return 100.0 * float(np.mean([counts[label] for label in probe_labels])) / len(gallery_labels)


def landmark_error(landmarks: np.ndarray, reference: np.ndarray) -> float:
    """Mean distance between matching landmarks [68, 2], over the reference's inter-ocular distance."""
    landmarks, reference = np.asarray(landmarks, np.float64), np.asarray(reference, np.float64)
    inter_ocular = np.linalg.norm(reference[OUTER_EYE_CORNERS[0]] - reference[OUTER_EYE_CORNERS[1]])
    return float(np.linalg.norm(landmarks - reference, axis=1).mean() / inter_ocular)


def split_held_out(keys: Sequence[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(train, held out) keys: a seeded draw, at least one of each when there are two keys or more."""
    keys = sorted(keys)
    if len(keys) < 2:
        return set(keys), set()
    order = np.random.default_rng(seed).permutation(len(keys))
    count = min(max(1, round(len(keys) * fraction)), len(keys) - 1)
    return {keys[i] for i in order[count:]}, {keys[i] for i in order[:count]}


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, tests: Mapping[str, tuple[np.ndarray, np.ndarray]],
                   names: Sequence[str], max_iter: int) -> dict[str, dict]:
    """A logistic regression per attribute, trained on (train_x, train_y [N, A] 0/1); per test set, the mean
    accuracy over the attributes and each attribute's.  An attribute with one class in training is predicted as
    that class (there is nothing to fit)."""
    from sklearn.linear_model import LogisticRegression

    predictions = {name: [] for name in tests}
    for a in range(train_y.shape[1]):
        classes = np.unique(train_y[:, a])
        model = None if len(classes) < 2 else LogisticRegression(max_iter=max_iter).fit(train_x, train_y[:, a])
        for name, (x, _) in tests.items():
            predictions[name].append(np.full(len(x), classes[0]) if model is None else model.predict(x))
    result = {}
    for name, (x, y) in tests.items():
        if not len(x):
            continue
        per_attribute = {n: float(np.mean(p == y[:, a])) for a, (n, p) in enumerate(zip(names, predictions[name]))}
        result[name] = {"mean": float(np.mean(list(per_attribute.values()))), "per_attribute": per_attribute,
                        "images": len(x)}
    return result


# --- The evaluator ------------------------------------------------------------------------------------------------
@dataclass
class _Tally:
    """What the pass over the images collects, per row: a (method, m) variant, or ORIGINAL for the originals
    (m below stands for either)."""
    detected: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))   # m -> detector -> bools
    gallery: dict = field(default_factory=lambda: defaultdict(list))                        # judge -> [(label, vec)]
    probes: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))     # m -> judge -> [...]
    landmark_errors: dict = field(default_factory=lambda: defaultdict(list))                 # m -> [float]
    encodings: dict = field(default_factory=lambda: defaultdict(dict))                       # m -> key -> vec
    no_face: int = 0   # originals in which dlib found no face: left out of the identity and landmark measures


class Evaluator:
    """Every judge, loaded once: FaceNet x2, MTCNN, the FID Inception and the probe's encoder (falco.evaluate.judges),
    and the project's own ArcFace, dlib detector and dlib recogniser."""

    def __init__(self, judges, arcface: ArcFace, analyzer: FaceAnalyzer, recognizer: FaceRecognizer,
                 device: torch.device, config: EvaluationConfig = EvaluationConfig(),
                 provenance: dict[str, dict] | None = None):
        self.judges, self.arcface, self.analyzer, self.recognizer = judges, arcface, analyzer, recognizer
        self.device, self.config = device, config
        # judge -> file, sha256, origin (falco.evaluate.judges): what metrics.json says the figures rest on
        self.provenance = provenance if provenance is not None else dict(getattr(judges, "provenance", None) or {})

    @classmethod
    def from_pretrained(cls, source: str | None = None, device: str | torch.device | None = None,
                        config: EvaluationConfig = EvaluationConfig(), progress: bool = True) -> Evaluator:
        """``source``: a weight set (Hub repo or folder, as the CLI's --weights) for ArcFace and dlib's models; the
        judges come from its evaluation files when it has them, else from their public sources."""
        from falco.evaluate.judges import load_judges, weight_set_provenance
        from falco.models.networks import load_networks
        from falco.weights import fetch_weights

        device = resolve_device(device)
        names = ("arcface", "dlib_landmarks", "dlib_recognition")
        paths = fetch_weights(source, names=names, progress=progress)
        arcface = load_networks(paths, device, names=("arcface",)).arcface
        analyzer = FaceAnalyzer(paths.dlib_landmarks, FaceConfig(detect_max_side=config.detect_max_side))
        judges = load_judges(source, device, progress=progress)
        return cls(judges, arcface, analyzer, FaceRecognizer(paths.dlib_recognition), device, config,
                   {**(judges.provenance or {}), **weight_set_provenance(paths, names)})

    @torch.no_grad()
    def evaluate(self, data: EvaluationSet, aligned: bool = False, progress: bool = True,
                 fid_reference: Sequence[ImageLoader] = ()) -> dict:
        """metrics.json's figures for every method and m of ``data``.  ``aligned``: the images are FFHQ-aligned
        face crops (CelebA-HQ, FFHQ), seen whole by the identity judges; else each original's largest face is
        found and aligned, and its anonymized images are cropped at the same place (the run keeps the face where it
        was).  ``fid_reference``: the images of another set (the paper's "FID (C-HQ)": LFW's anonymized images
        against CelebA-HQ), each row's second FID."""
        by_key = defaultdict(list)
        for item in data.anonymized:
            by_key[item.key].append(item)
        originals = [o for o in data.originals if o.key in by_key]
        variants = data.variants
        inception = _fid_inception(self.judges.fid_weights, self.config.fid_features, self.device)
        real_fid, fake_fid = _fid_metric(inception, self.device), {v: _fid_metric(inception, self.device)
                                                                   for v in variants}
        reference = None
        if fid_reference:
            reference = (_fid_metric(inception, self.device), {v: _fid_metric(inception, self.device)
                                                               for v in variants})
        tally = _Tally()
        total = len(fid_reference) + len(originals) + sum(len(by_key[o.key]) for o in originals)
        with tqdm(total=total, unit="image", desc="evaluating", disable=not progress) as bar:
            for load in fid_reference:
                _fid_update(reference[0], [load()], True, self.device)
                bar.update(1)
            for original in originals:
                self._measure(original, by_key[original.key], aligned, tally, real_fid, fake_fid, reference)
                bar.update(1 + len(by_key[original.key]))
        figures = self._figures(data, originals, variants, aligned, tally, real_fid, fake_fid)
        if reference is not None:
            figures["input"]["fid_reference_images"] = len(fid_reference)
            for row, variant in zip(figures["margins"], variants):
                row["fid_reference"] = _fid_value(reference[0], reference[1][variant])
        return figures

    def _measure(self, original: Original, anonymized: list, aligned: bool, tally: _Tally, real_fid, fake_fid,
                 reference=None):
        photo = original.load()
        images = [item.load() for item in anonymized]
        labels = [ORIGINAL, *(item.variant for item in anonymized)]
        found = [self.analyzer.detect(image) for image in (photo, *images)]
        for label, faces, boxes in zip(labels, found, self.judges.mtcnn.detect([photo, *images])):
            boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
            tally.detected[label]["dlib"].append(bool(self._confident(faces)))
            tally.detected[label]["mtcnn"].append(bool((boxes[:, 4] >= self.config.mtcnn_min_probability).any()))
        _fid_update(real_fid, [photo], True, self.device)
        for m, image in zip(labels[1:], images):
            _fid_update(fake_fid[m], [image], False, self.device)
            if reference is not None:
                _fid_update(reference[1][m], [image], False, self.device)

        face = _largest(self._confident(found[0]))
        if face is None and not aligned:
            tally.no_face += 1
            return
        # The run keeps the face where it was: the original's landmarks locate every anonymized face too (scaled,
        # should an anonymized image have another size).
        points = [None if face is None else _scaled(face.landmarks, photo.size, image.size)
                  for image in (photo, *images)]
        crops = [self._crop(image, landmarks, aligned) for image, landmarks in zip((photo, *images), points)]
        embeddings = self._embed(crops, [photo, *images], None if face is None else points)
        identity = original.identity if original.identity is not None else original.key
        for judge, vectors in embeddings.items():
            tally.gallery[judge].append((identity, vectors[0]))
            for m, vector in zip(labels[1:], vectors[1:]):
                tally.probes[m][judge].append((identity, vector))
        if original.attributes is not None:
            encoded = self.judges.probe_encoder.encode(crops).float().cpu().numpy()
            for m, vector in zip(labels, encoded):
                tally.encodings[m][original.key] = vector
        if face is not None:
            for m, faces, reference in zip(labels[1:], found[1:], points[1:]):
                match = _nearest(self._confident(faces), reference)
                if match is not None:
                    tally.landmark_errors[m].append(landmark_error(match.landmarks, reference))

    def _confident(self, faces: list[DetectedFace]) -> list[DetectedFace]:
        return [f for f in faces if f.score >= self.analyzer.config.min_detector_score]

    def _crop(self, image: Image.Image, landmarks: np.ndarray | None, aligned: bool) -> Image.Image:
        size = self.config.crop_size
        if aligned:
            return image.resize((size, size), Image.Resampling.LANCZOS)
        return align_face(image, landmarks, size=size).image

    def _embed(self, crops: list[Image.Image], images: list[Image.Image], landmarks: list | None) -> dict:
        """judge -> [len(crops), D] on the CPU; dlib's only where the original's landmarks are known."""
        faces = to_tensor(crops, self.device)                          # [-1, 1]
        box = tuple(round(v * self.config.crop_size / 256) for v in self.config.facenet_box)
        facenet_input = (to_tensor([c.crop(box) for c in crops], self.device) + 1) / 2   # FaceNet takes [0, 1]
        result = {f"facenet_{name}": self.judges.facenet[name].embed(facenet_input).float().cpu().numpy()
                  for name in ("casia", "vgg")}
        result["arcface"] = self.arcface(identity_preprocess(faces)).float().cpu().numpy()
        if landmarks is not None:
            result["dlib"] = np.stack([self.recognizer.descriptor(image, points)
                                       for image, points in zip(images, landmarks)])
        return result

    def _figures(self, data: EvaluationSet, originals: list[Original], variants: list, aligned: bool,
                 tally: _Tally, real_fid, fake_fid) -> dict:
        rows = []
        probe = self._probe(data, originals, tally, variants)
        gallery = {judge: list(zip(*entries)) for judge, entries in tally.gallery.items()}
        for m in variants:
            reid, chance = {}, None
            for judge in IDENTITY_JUDGES:
                found = tally.probes[m].get(judge)
                if found and judge in gallery:
                    labels, vectors = zip(*found)
                    reid[judge] = nearest_match_rate(np.stack(gallery[judge][1]), gallery[judge][0],
                                                     np.stack(vectors), labels, judge in EUCLIDEAN_JUDGES)
                    if chance is None:   # FaceNet's gallery and probes: every face the judges saw
                        chance = chance_rate(gallery[judge][0], labels)
            errors = tally.landmark_errors.get(m, [])
            rows.append({
                "method": m[0],
                "margin": m[1],
                "images": len(tally.detected[m]["dlib"]),
                "fid": _fid_value(real_fid, fake_fid[m]),
                "detection_percent": {d: 100.0 * float(np.mean(v)) for d, v in tally.detected[m].items()},
                "reid_percent": reid,
                "reid_chance_percent": chance,
                "attribute_accuracy": probe.get(m, {}).get("mean"),
                "attribute_accuracy_per_attribute": probe.get(m, {}).get("per_attribute"),
                "landmark_error": float(np.mean(errors)) if errors else None,
                "landmark_faces": len(errors),
            })
        original = {"images": len(originals),
                    "detection_percent": {d: 100.0 * float(np.mean(v)) for d, v in tally.detected[ORIGINAL].items()},
                    "attribute_accuracy": probe.get(ORIGINAL, {}).get("mean"),
                    "attribute_accuracy_per_attribute": probe.get(ORIGINAL, {}).get("per_attribute")}
        return {"input": {"kind": data.kind, "aligned": aligned, "fid_features": self.config.fid_features,
                          "originals": len(originals),
                          "anonymized": sum(r["images"] for r in rows), "skipped": dict(data.skipped),
                          "no_face_in_original": tally.no_face, "identity_labels": data.has_identities,
                          "attributes": list(data.attribute_names),
                          "probe_held_out": probe.get(ORIGINAL, {}).get("images", 0),
                          "identities": len(set(gallery[IDENTITY_JUDGES[0]][0])) if IDENTITY_JUDGES[0] in gallery
                          else 0},
                "settings": [{"set": name, **summary} for name, summary in data.settings.items()],
                "judges": self.provenance, "original": original, "margins": rows}

    def _probe(self, data: EvaluationSet, originals: list[Original], tally: _Tally, variants: list) -> dict:
        """The linear probe trained on the originals left in training, tested on the held-out originals (the upper
        bound, the paper's "Original" row) and on those originals' anonymized images, per method and m."""
        encoded = tally.encodings.get(ORIGINAL, {})
        if not data.attribute_names or len(encoded) < 2:
            return {}
        train, held_out = split_held_out(list(encoded), self.config.probe_test_fraction, self.config.seed)
        labels = {o.key: np.array(o.attributes) for o in originals if o.attributes is not None}

        def stack(vectors: dict, keys) -> tuple[np.ndarray, np.ndarray]:
            keys = sorted(k for k in keys if k in vectors)
            width = len(data.attribute_names)
            return (np.stack([vectors[k] for k in keys]) if keys else np.zeros((0, 1)),
                    np.stack([labels[k] for k in keys]) if keys else np.zeros((0, width)))

        tests = {m: stack(tally.encodings.get(m, {}), held_out) for m in (ORIGINAL, *variants)}
        return probe_accuracy(*stack(encoded, train), tests, data.attribute_names, self.config.probe_max_iter)


def _scaled(landmarks: np.ndarray, size: tuple[int, int], other: tuple[int, int]) -> np.ndarray:
    """Landmarks of an image of ``size`` in an image of ``other`` size (pixel centres on integers, as dlib)."""
    if size == other:
        return landmarks
    scale = np.array(other, np.float64) / np.array(size, np.float64)
    return (landmarks + 0.5) * scale - 0.5


def _largest(faces: list[DetectedFace]) -> DetectedFace | None:
    return max(faces, key=lambda f: f.area, default=None)


def _nearest(faces: list[DetectedFace], reference: np.ndarray) -> DetectedFace | None:
    """The detection whose landmarks' centre lies nearest the reference landmarks' [68, 2]."""
    centre = reference.mean(0)
    return min(faces, key=lambda f: float(np.linalg.norm(f.landmarks.mean(0) - centre)), default=None)


# --- FID (torchmetrics, torch-fidelity's InceptionV3) ---------------------------------------------------------------
@contextmanager
def _weights_only_loads():
    """Every torch.load in the block unpickles tensors and plain containers only, whatever its caller asks:
    torch-fidelity reads its Inception file with weights_only=False, and torch's own switch overrides that."""
    before = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[FORCE_WEIGHTS_ONLY]
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = before


FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def _fid_inception(weights, features: int, device: torch.device):
    """torch-fidelity's InceptionV3 as torch-fidelity and pytorch-fid run it, so that the FID compares with
    published ones (tests/test_fid.py holds it to torch_fidelity.calculate_metrics)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    with _weights_only_loads():
        # antialias=False: TensorFlow 1's bilinear resize to 299 px, which the published FIDs used.  torchmetrics'
        # default, antialiased, put 512 px sets' FIDs 18 to 23 % off torch-fidelity's (issue 22).
        inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(features)],
                                       feature_extractor_weights_path=str(weights), antialias=False).to(device)
    inception.num_features = features   # torchmetrics reads it instead of probing with a CPU image
    return inception


def _fid_metric(inception, device: torch.device):
    """One FID accumulator; all share one Inception.  The originals' go into one of their own, merged into each m's
    (torchmetrics' merge_state sums the states) so that the originals pass through Inception once."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=inception).to(device)


def _fid_update(metric, images: Sequence[Image.Image], real: bool, device: torch.device) -> None:
    pixels = np.stack([np.asarray(image.convert("RGB")) for image in images])   # one size: the images of one photo
    metric.update(torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device), real=real)


def _fid_value(real_fid, fake_fid) -> float | None:
    """FID of one m's anonymized images against the originals; None below two images a side (no covariance).
    Called once per m: the originals' state is merged into the m's accumulator."""
    if int(real_fid.real_features_num_samples) < 2 or int(fake_fid.fake_features_num_samples) < 2:
        return None
    fake_fid.merge_state(real_fid)
    return float(fake_fid.compute())
