"""The anonymization engine: photo -> faces -> W+ -> fake pair -> optimised W+ -> pasted photo.

    pipe = FalcoPipeline.from_pretrained()            # loads every network once
    for event in pipe.anonymize("photo.jpg", margins=(0.0, 0.5)):
        if isinstance(event, StepEvent): ...          # progress, previews, losses
        else: result = event                          # AnonymizationResult, always last

Faces x margins run as one batch.  ``anonymize`` is a generator: a consumer that stops
iterating (or closes it) stops the work at the next step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass

import dlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import falco
from falco.bank import FakeBank
from falco.checks import check_run_settings
from falco.config import DLIB_SAME_PERSON_DISTANCE, BankConfig, FaceConfig, OptimConfig
from falco.errors import FalcoError, WeightsError
from falco.faces import AlignedFace, DetectedFace, FaceAnalyzer, align_face, load_photo, paste_faces, require_usable
from falco.faces.io import PhotoSource
from falco.optimize import FalcoLoss, RealFeatures, optimize_latents, start_wplus
from falco.speed import reuse_freed_memory
from falco.weights import Networks, WeightPaths, fetch_weights, load_networks


def resolve_device(device: str | torch.device | None = None, present: bool = True) -> torch.device:
    """``device``, else CUDA where there is one, else the CPU.  An unknown name, or a CUDA device this machine
    does not have, is a FalcoError of one line; ``present=False`` skips the second check (ZeroGPU lends each run
    a GPU that the process cannot see before)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise FalcoError(f"Unknown device {device!r}: expected e.g. cpu, cuda or cuda:1.") from err
    if present and resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FalcoError(f"Device {str(device)!r} is not available: PyTorch finds no CUDA GPU on this machine; "
                             "use cpu.")
        if resolved.index is not None and resolved.index >= count:
            raise FalcoError(f"Device {str(device)!r} is not available: this machine has {count} CUDA GPU(s), "
                             f"cuda:0 to cuda:{count - 1}.")
    return resolved


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


@dataclass(frozen=True)
class StepEvent:
    step: int                          # 1..total_steps
    total_steps: int
    items: list[tuple[int, float]]     # (face index, m) of each batch item, in preview order
    previews: list[Image.Image]        # one per item every `preview_every` steps and at the last; else []
    losses: dict[str, list[float]]     # identity, attribute, total: one value per item
    identity_cosine: list[float]       # ArcFace cosine to the original, per item


@dataclass(frozen=True)
class FaceResult:
    face_index: int                    # index into the photo's detections
    margin: float
    aligned: Image.Image               # the original, FFHQ-aligned
    inversion: Image.Image             # e4e reconstruction
    fake: Image.Image                  # the fake neighbour from the bank
    anonymized: Image.Image
    wplus: torch.Tensor                # [num_ws, D] anonymized W+ (latent_avg included), CPU
    wplus_inversion: torch.Tensor      # [num_ws, D]
    fake_index: int                    # row of the fake bank
    fake_seed: int
    identity_cosine: float             # ArcFace cosine between original and anonymized
    recognizer_distance: float         # dlib distance; >= 0.6 means "another person" to dlib


# The "what" of every W+ file written from an AnonymizationResult (the app's download, the CLI's output).
WPLUS_FILE_METADATA = ("FALCO W+ codes (latent_avg included): wplus [faces, margins, rows, dim] anonymized, "
                       "wplus_inversion [faces, rows, dim] e4e; face counts from 1 in detection order")


@dataclass(frozen=True)
class AnonymizationResult:
    faces: list[FaceResult]            # faces x margins, face-major
    photos: list[Image.Image]          # the photo with every face pasted back, one per margin
    margins: tuple[float, ...]
    params: dict

    @property
    def photo(self) -> Image.Image:
        return self.photos[0]

    def face_records(self) -> list[dict]:
        """One JSON-ready dict per face and m, as the app and the CLI record them.  ``face`` counts from 1
        in detection order (the number the app shows), unlike ``FaceResult.face_index``."""
        return [{"face": r.face_index + 1, "margin": r.margin, "identity_cosine": r.identity_cosine,
                 "recognizer_distance": r.recognizer_distance,
                 "same_person_for_dlib": r.recognizer_distance < DLIB_SAME_PERSON_DISTANCE,
                 "fake_index": r.fake_index, "fake_seed": r.fake_seed} for r in self.faces]

    def latent_tensors(self) -> dict[str, torch.Tensor]:
        """The W+ codes as a safetensors dict (see WPLUS_FILE_METADATA); ``face`` as in ``face_records``."""
        per_face = self.faces[::len(self.margins)]
        wplus = torch.stack([r.wplus.float() for r in self.faces]).unflatten(0, (len(per_face), len(self.margins)))
        return {"wplus": wplus.cpu().contiguous(),
                "wplus_inversion": torch.stack([r.wplus_inversion.float() for r in per_face]).cpu().contiguous(),
                "face": torch.tensor([r.face_index + 1 for r in per_face]),
                "margin": torch.tensor(self.margins, dtype=torch.float32),
                "fake_index": torch.tensor([r.fake_index for r in per_face])}


@dataclass(frozen=True)
class _Prepared:
    """The chosen faces before optimisation: crops, real features, inversion, fake pair."""
    chosen: list[int]
    aligned: list[AlignedFace]
    real: RealFeatures                  # [F] features of the real crops, computed once
    wplus_inversion: torch.Tensor       # [F, num_ws, D]
    fake_rows: torch.Tensor             # [F] bank rows
    w_fake: torch.Tensor                # [F, D]
    fake_k: int
    inversions: list[Image.Image]
    fakes: list[Image.Image]


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


class FalcoPipeline:
    def __init__(self, networks: Networks, bank: FakeBank, analyzer: FaceAnalyzer, recognizer: FaceRecognizer,
                 face_config: FaceConfig = FaceConfig(), source: str = ""):
        g = networks.generator
        if networks.e4e.config["n_styles"] != g.num_ws:
            raise WeightsError(f"e4e predicts {networks.e4e.config['n_styles']} W+ rows, "
                               f"the generator takes {g.num_ws}.")
        if bank.w.shape[1] != g.style_dim or bank.embeddings.shape[1] != networks.farl.config["embed_dim"]:
            raise WeightsError("The fake bank does not fit the generator and FaRL (other weights?).")
        self.nets, self.bank, self.analyzer, self.recognizer = networks, bank, analyzer, recognizer
        self.face_config, self.source = face_config, source

    @classmethod
    def from_pretrained(cls, source: str | WeightPaths | None = None, device: str | torch.device | None = None,
                        face_config: FaceConfig = FaceConfig(), progress: bool = True) -> FalcoPipeline:
        """Every network and model of a weight set (Hub repo id or folder, or its fetched paths); CUDA when
        available."""
        device = resolve_device(device)   # before the fetch: a missing GPU costs no download
        paths = source if isinstance(source, WeightPaths) else fetch_weights(source, progress=progress)
        if device.type == "cpu":
            reuse_freed_memory()   # ~2x faster CPU steps; best called first thing in the program (falco.speed)
        networks = load_networks(paths, device)
        return cls(networks, FakeBank.load(paths.fake_bank), FaceAnalyzer(paths.dlib_landmarks, face_config),
                   FaceRecognizer(paths.dlib_recognition), face_config, paths.source)

    @property
    def device(self) -> torch.device:
        return self.nets.device

    def detect(self, photo: PhotoSource) -> list[DetectedFace]:
        """Every face of the photo, usable ones first, largest first."""
        return self.analyzer.detect(load_photo(photo, self.face_config))

    @torch.no_grad()
    def invert(self, aligned: Sequence[Image.Image]) -> torch.Tensor:
        """e4e W+ [F, num_ws, D] (latent_avg included) of aligned faces."""
        e4e = self.nets.e4e
        return e4e(to_tensor(aligned, self.device, e4e.config["input_size"])) + self.nets.latent_avg

    @torch.no_grad()
    def render(self, wplus: torch.Tensor) -> torch.Tensor:
        return self.nets.generator(wplus)

    def anonymize(self, photo: PhotoSource, faces: Sequence[int] | None = None,
                  margins: Sequence[float] | None = None, optim: OptimConfig | None = None,
                  fake_k: int | None = None, detections: list[DetectedFace] | None = None,
                  ) -> Iterator[StepEvent | AnonymizationResult]:
        """StepEvent after every optimisation step, then one AnonymizationResult.

        faces: indices into ``detections`` (default: every usable face; an unusable one is
        refused); margins: the m values in [0, 1], each face runs once per m (default:
        ``optim.margin``); fake_k: the fake is drawn among this many nearest neighbours with
        ``optim.seed`` (1: the nearest).  ``detections``: those of an earlier ``detect`` on this
        photo, to skip detecting again.  Bad settings are a FalcoError before any work
        (falco.checks).
        """
        optim = optim or OptimConfig()
        fake_k = BankConfig().k_nearest if fake_k is None else fake_k
        margins = check_run_settings(margins if margins is not None else (optim.margin,), optim, fake_k,
                                     len(self.bank))
        photo = load_photo(photo, self.face_config)
        detections = self.analyzer.detect(photo) if detections is None else detections
        loss = FalcoLoss.for_config(self.nets.arcface, self.nets.farl, optim)
        prepared = self._prepare(photo, detections, self._choose(detections, faces), loss,
                                 fake_k, optim.seed)

        # Batch items: every chosen face at every m, face-major.
        face_of = torch.arange(len(prepared.chosen), device=self.device).repeat_interleave(len(margins))
        labels = [(prepared.chosen[f], m) for f in range(len(prepared.chosen)) for m in margins]
        wplus_real, w_fake = prepared.wplus_inversion[face_of], prepared.w_fake[face_of]
        wplus = start_wplus(wplus_real, w_fake, optim.trained_rows)   # the result if steps == 0
        stream = optimize_latents(self.nets.generator, loss, prepared.real.select(face_of), wplus_real, w_fake,
                                  torch.tensor(margins, device=self.device).repeat(len(prepared.chosen)), optim)
        with closing(stream):
            for step in stream:
                wplus = step.wplus
                show = step.step % max(optim.preview_every, 1) == 0 or step.step == step.total_steps
                previews = preview_images(step.image, optim.preview_size) if show else []
                yield StepEvent(step.step, step.total_steps, labels, previews, step.terms.as_lists(),
                                step.terms.identity_cosine.tolist())
        yield self._result(photo, prepared, margins, face_of, wplus, loss, optim)

    @torch.no_grad()
    def _prepare(self, photo: Image.Image, detections: list[DetectedFace], chosen: list[int], loss: FalcoLoss,
                 fake_k: int, seed: int) -> _Prepared:
        aligned = [align_face(photo, detections[i], config=self.face_config) for i in chosen]
        crops = [a.image for a in aligned]
        real = loss.real_features(to_tensor(crops, self.device))
        wplus_inversion = self.invert(crops)
        # The pairing embedding comes from the tokens the attribute loss needs anyway.
        fake_rows = self.bank.nearest(self.nets.farl.embed_tokens(real.tokens).cpu(), k=fake_k, seed=seed)
        w_fake = self.bank.w[fake_rows].to(self.device)
        g = self.nets.generator
        shown = self.render(torch.cat([wplus_inversion, w_fake[:, None].expand(-1, g.num_ws, -1)]))
        size = self.face_config.aligned_size
        return _Prepared(chosen, aligned, real, wplus_inversion, fake_rows, w_fake, fake_k,
                         [to_image(x, size) for x in shown[:len(chosen)]],
                         [to_image(x, size) for x in shown[len(chosen):]])

    @torch.no_grad()
    def _result(self, photo: Image.Image, prepared: _Prepared, margins: tuple[float, ...], face_of: torch.Tensor,
                wplus: torch.Tensor, loss: FalcoLoss, optim: OptimConfig) -> AnonymizationResult:
        final = self.render(wplus)
        cosine = (loss.identity_embedding(final) * prepared.real.identity[face_of]).sum(-1).tolist()
        results = []
        for i, (f, m) in enumerate(zip(face_of.tolist(), margins * len(prepared.chosen))):
            aligned, row = prepared.aligned[f], int(prepared.fake_rows[f])
            anonymized = to_image(final[i], self.face_config.aligned_size)
            results.append(FaceResult(
                face_index=prepared.chosen[f], margin=m, aligned=aligned.image, inversion=prepared.inversions[f],
                fake=prepared.fakes[f], anonymized=anonymized, wplus=wplus[i].cpu(),
                wplus_inversion=prepared.wplus_inversion[f].cpu(), fake_index=row,
                fake_seed=int(self.bank.seeds[row]), identity_cosine=float(cosine[i]),
                recognizer_distance=self.recognizer.distance(aligned.image, anonymized, aligned.landmarks)))
        n = len(margins)
        photos = [paste_faces(photo, [(a, results[f * n + j].anonymized) for f, a in enumerate(prepared.aligned)],
                              self.face_config) for j in range(n)]
        return AnonymizationResult(results, photos, margins, self._params(prepared, margins, optim))

    def _choose(self, detections: list[DetectedFace], faces: Sequence[int] | None) -> list[int]:
        if faces is None:
            return require_usable(detections)
        chosen = sorted({int(i) for i in faces})
        if not chosen:
            raise FalcoError("Choose at least one face to anonymize.")
        missing = [i for i in chosen if not 0 <= i < len(detections)]
        if missing:
            raise FalcoError(f"The photo has {len(detections)} detected face(s); there is no face {missing[0] + 1}.")
        # The app never offers these faces; its API and other callers are refused them alike.
        for i in chosen:
            if not detections[i].usable:
                raise FalcoError(f"Face {i + 1} cannot be anonymized: {detections[i].reason}.")
        return chosen

    def _params(self, prepared: _Prepared, margins: tuple[float, ...], optim: OptimConfig) -> dict:
        return {"faces": prepared.chosen, "margins": list(margins), "optim": asdict(optim), "fake_k": prepared.fake_k,
                "fake_rows": prepared.fake_rows.tolist(), "fake_seeds": self.bank.seeds[prepared.fake_rows].tolist(),
                "bank": {"size": len(self.bank), **self.bank.config}, "weights": self.source,
                "device": str(self.device), "falco_version": falco.__version__}
