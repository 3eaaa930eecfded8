"""The other anonymizers of the paper-style comparison table, for the command line's ``anonymize --method``.

    blur, pixelate, mask   each usable face's FFHQ-aligned crop Gaussian-blurred, pixelated or filled with one
                           colour (BaselineConfig), pasted back through FALCO's own mask: the same detection,
                           alignment and paste-back as FALCO, dlib alone (no network of the weight set is built)
    nearest-fake           FALCO without its optimisation (FalcoPipeline.paired): the paired fake's w in the
                           trained rows, the inversion elsewhere; what the optimisation adds is the difference

    anonymizer = load_method("blur", weights)          # or "falco": the FalcoPipeline itself
    result = list(anonymizer.anonymize("photo.jpg"))[-1]

Each anonymizer has the interface falco.photo_folders runs (``anonymize``, ``anonymize_batch``, ``source``) and
names itself in ``method_settings``, which the records keep.  A baseline has no m: its results' ``margins`` are
(None,), one image per photo, and no W+ file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageFilter

import falco
from falco.config import CLASSICAL_METHODS, METHODS, BaselineConfig, FaceConfig, OptimConfig
from falco.errors import WeightsError
from falco.faces import AlignedFace, FaceAnalyzer, align_face, load_photo, paste_faces, require_usable
from falco.faces.io import PhotoSource
from falco.results import AlignmentCheck
from falco.weights.hub import weights_label

NO_MARGIN = (None,)   # a baseline's "m values": one result per photo, the same whatever m FALCO would use


@dataclass(frozen=True)
class BaselineResult:
    """A baseline's result for one photo, recorded as falco.photo_folders records FALCO's (no W+ file)."""
    photos: list[Image.Image]           # one: the photo with every usable face replaced
    faces: list[dict]                   # per face, JSON-ready: ``face`` (from 1), ``margin`` None, the method's own
    params: dict
    alignment: AlignmentCheck | None = None   # aligned inputs only
    margins: tuple[None, ...] = field(default=NO_MARGIN)

    @property
    def photo(self) -> Image.Image:
        return self.photos[0]

    def face_records(self) -> list[dict]:
        return self.faces


def obscure(face: Image.Image, method: str, config: BaselineConfig = BaselineConfig()) -> Image.Image:
    """``face`` (an RGB crop) blurred, pixelated or filled, as ``method`` (one of CLASSICAL_METHODS) says; sizes
    scale with its side."""
    side = face.width
    if method == "blur":
        return face.filter(ImageFilter.GaussianBlur(config.blur_sigma * side))
    if method == "pixelate":
        cells = min(config.pixelate_cells, side)
        return face.resize((cells, cells), Image.Resampling.BOX).resize(face.size, Image.Resampling.NEAREST)
    if method == "mask":
        return Image.new("RGB", face.size, config.mask_fill)
    raise ValueError(f"{method!r} is not a classical method; expected one of {CLASSICAL_METHODS}")


class Baseline:
    """What falco.photo_folders runs: one result per photo (``run``), the photos of a batch one by one."""
    method: str
    source: str   # the weight set, as FalcoPipeline.source

    @property
    def method_settings(self) -> dict:
        """The method and what decides its outputs besides the run's settings (recorded in ``settings``)."""
        return {"name": self.method}

    def run(self, photo: PhotoSource, optim: OptimConfig, fake_k: int | None, aligned: bool) -> BaselineResult:
        raise NotImplementedError

    def anonymize(self, photo: PhotoSource, margins: Sequence[float | None] | None = None,
                  optim: OptimConfig | None = None, fake_k: int | None = None,
                  aligned: bool = False) -> Iterator[BaselineResult]:
        """FalcoPipeline.anonymize's interface: its one event is the result (``margins``: a baseline has none)."""
        yield self.run(photo, optim or OptimConfig(), fake_k, aligned)

    def anonymize_batch(self, photos: Sequence[PhotoSource], margins: Sequence[float | None] | None = None,
                        optim: OptimConfig | None = None, fake_k: int | None = None,
                        aligned: bool = False) -> Iterator[list[BaselineResult | Exception]]:
        """FalcoPipeline.anonymize_batch's interface: per photo its result or the error that turned it down."""
        outcomes: list[BaselineResult | Exception] = []
        for photo in photos:
            try:
                outcomes.append(self.run(photo, optim or OptimConfig(), fake_k, aligned))
            except WeightsError:
                raise   # every photo would fail the same way
            except Exception as err:   # one bad photo must not stop the batch
                outcomes.append(err)
        yield outcomes


class ClassicalBaseline(Baseline):
    """Blur, pixelation or a solid mask of each usable face: dlib's landmarks, FALCO's alignment and paste-back."""

    def __init__(self, method: str, analyzer: FaceAnalyzer, source: str = "", face_config: FaceConfig = FaceConfig(),
                 config: BaselineConfig = BaselineConfig()):
        if method not in CLASSICAL_METHODS:
            raise ValueError(f"{method!r} is not a classical method; expected one of {CLASSICAL_METHODS}")
        self.method, self.analyzer, self.source = method, analyzer, source
        self.face_config, self.config = face_config, config

    @property
    def method_settings(self) -> dict:
        return {"name": self.method, **self._sizes()}

    def _sizes(self) -> dict:
        """The one BaselineConfig value the method uses, JSON-ready."""
        name = {"blur": "blur_sigma", "pixelate": "pixelate_cells", "mask": "mask_fill"}[self.method]
        value = getattr(self.config, name)
        return {name: list(value) if isinstance(value, tuple) else value}

    def run(self, photo: PhotoSource, optim: OptimConfig, fake_k: int | None, aligned: bool) -> BaselineResult:
        photo = load_photo(photo, self.face_config)
        alignment = None
        if aligned:   # the photo is the face, as FalcoPipeline takes it
            face, offset = self.analyzer.as_aligned_face(photo)
            alignment = AlignmentCheck.from_offset(offset, self.face_config.aligned_max_offset)
            chosen, faces = [0], [face]
        else:
            detections = self.analyzer.detect(photo)
            chosen = require_usable(detections)
            faces = [align_face(photo, detections[i].landmarks, config=self.face_config) for i in chosen]
        return BaselineResult([self._replace(photo, faces)], [{"face": i + 1, "margin": None} for i in chosen],
                              self._params(chosen), alignment)

    def _replace(self, photo: Image.Image, faces: list[AlignedFace]) -> Image.Image:
        if len(faces) == 1 and faces[0].landmarks is None:
            # An aligned input on which dlib found no face has no face region: the crop is the face, as for FALCO.
            return obscure(photo, self.method, self.config)
        return paste_faces(photo, [(face, obscure(face.image, self.method, self.config)) for face in faces],
                           self.face_config)

    def _params(self, chosen: list[int]) -> dict:
        return {"method": self.method, **self._sizes(), "faces": chosen, "margins": list(NO_MARGIN),
                "weights": weights_label(self.source), "falco_version": falco.__version__}


class NearestFake(Baseline):
    """FALCO's pairing without its optimisation (FalcoPipeline.paired): e4e, the bank and FaRL pick and place the
    fake; its records judge it with ArcFace and dlib as FALCO's are judged."""
    method = "nearest-fake"

    def __init__(self, pipeline):
        self.pipeline, self.source = pipeline, pipeline.source

    @property
    def bank(self):
        return self.pipeline.bank

    def run(self, photo: PhotoSource, optim: OptimConfig, fake_k: int | None, aligned: bool) -> BaselineResult:
        result = self.pipeline.paired(photo, optim, fake_k, aligned)
        return BaselineResult(result.photos, result.face_records(), {"method": self.method, **result.params},
                              result.alignment)


def load_method(method: str, weights: str | None = None, device: str | None = None, progress: bool = True,
                face_config: FaceConfig = FaceConfig(), config: BaselineConfig = BaselineConfig()):
    """The anonymizer of ``method`` (one of METHODS): FALCO's FalcoPipeline, or a Baseline.  A classical method
    fetches dlib's landmark model alone."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method in CLASSICAL_METHODS:
        from falco.weights import fetch_weights
        paths = fetch_weights(weights, names=("dlib_landmarks",), progress=progress)
        return ClassicalBaseline(method, FaceAnalyzer(paths.dlib_landmarks, face_config), paths.source, face_config,
                                 config)
    from falco.pipeline import FalcoPipeline
    pipeline = FalcoPipeline.from_pretrained(weights, device=device, face_config=face_config, progress=progress)
    return pipeline if method == "falco" else NearestFake(pipeline)
