"""The anonymization engine: photo -> faces -> W+ -> fake pair -> optimised W+ -> pasted photo.

    pipe = FalcoPipeline.from_pretrained()            # loads every network once
    for event in pipe.anonymize("photo.jpg", margins=(0.0, 0.5)):
        if isinstance(event, StepEvent): ...          # progress, previews, losses
        else: result = event                          # AnonymizationResult, always last

Faces x margins run as one batch.  ``anonymize`` is a generator: a consumer that stops
iterating (or closes it) stops the work at the next step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

import falco
from falco.bank import FakeBank
from falco.checks import check_face_picks, check_run_settings
from falco.config import BankConfig, FaceConfig, OptimConfig, VideoConfig
from falco.device import resolve_device
from falco.errors import WeightsError
from falco.faces import AlignedFace, DetectedFace, FaceAnalyzer, align_face, load_photo, paste_faces
from falco.faces.io import PhotoSource
from falco.faces.recognize import FaceRecognizer
from falco.loss import FalcoLoss, RealFeatures
from falco.models.networks import Networks, load_networks
from falco.optimize import optimize_latents, start_wplus
from falco.pixels import preview_images, to_image, to_tensor
from falco.results import AnonymizationResult, FaceResult, StepEvent
from falco.speed import reuse_freed_memory
from falco.video.anonymize import VideoProgress, VideoResult, anonymize_video
from falco.weights import WeightPaths, fetch_weights


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


def weights_label(source: str) -> str:
    """How records name the weights: a Hub repo as given (user/name[@revision]), a local folder by its name only,
    so that no record (the app's downloads included) shows a server path.  Resumes compare ``source`` itself."""
    return f"local folder {Path(source).name}" if Path(source).is_absolute() else source


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
        prepared = self._prepare(photo, detections, list(check_face_picks(faces, detections)), loss,
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

    def anonymize_video(self, source: str | Path, out_path: str | Path, margin: float | None = None,
                        optim: OptimConfig | None = None, fake_k: int | None = None,
                        refine_steps: int | None = None, codec: str | None = None,
                        config: VideoConfig = VideoConfig(), max_seconds: float | None = None,
                        ) -> Iterator[VideoProgress | VideoResult]:
        """VideoProgress events (tracking, each person's identity with its optimisation steps, rendering),
        then one VideoResult; the anonymized clip, with the source's frame rate, frames and audio, is at
        ``out_path`` once the result is yielded.  See falco.video.anonymize."""
        yield from anonymize_video(self, source, out_path, margin, optim, fake_k, refine_steps, codec, config,
                                   max_seconds)

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

    def _params(self, prepared: _Prepared, margins: tuple[float, ...], optim: OptimConfig) -> dict:
        return {"faces": prepared.chosen, "margins": list(margins), "optim": asdict(optim), "fake_k": prepared.fake_k,
                "fake_rows": prepared.fake_rows.tolist(), "fake_seeds": self.bank.seeds[prepared.fake_rows].tolist(),
                "bank": {"size": len(self.bank), **self.bank.config}, "weights": weights_label(self.source),
                "device": str(self.device), "falco_version": falco.__version__}
