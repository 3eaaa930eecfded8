"""The anonymization engine: photo -> faces -> W+ -> fake pair -> optimised W+ -> pasted photo.

    pipe = FalcoPipeline.from_pretrained()            # loads every network once
    for event in pipe.anonymize("photo.jpg", margins=(0.0, 0.5)):
        if isinstance(event, StepEvent): ...          # progress, previews, losses
        else: result = event                          # AnonymizationResult, always last

Faces x margins run as one batch.  ``anonymize`` is a generator: a consumer that stops
iterating (or closes it) stops the work at the next step.  ``anonymize(..., aligned=True)``
takes an FFHQ-aligned crop as the face itself; ``anonymize_batch`` optimises the faces of
several photos together (each gets the result a run of its own gives).

The engine knows photos only.  Clips (falco.video) stand on its public steps: ``settings`` (a run's
defaults and checks, the one door for photos and clips), ``invert``, ``render``, ``fake_w``, ``loss``
and ``refine``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass

import torch
from PIL import Image

import falco
from falco import allocator
from falco.bank import FakeBank
from falco.checks import check_face_picks, check_run_settings
from falco.config import DEFAULT_MARGIN, BankConfig, FaceConfig, OptimConfig
from falco.device import render_batch, resolve_device
from falco.errors import WeightsError
from falco.faces import AlignedFace, DetectedFace, FaceAnalyzer, align_face, load_photo, paste_faces
from falco.faces.io import PhotoSource
from falco.faces.recognize import FaceRecognizer
from falco.loss import FalcoLoss, RealFeatures
from falco.models.networks import Networks, load_networks
from falco.optimize import optimize_latents, start_wplus
from falco.pixels import preview_images, to_image, to_tensor
from falco.results import AlignmentCheck, AnonymizationResult, FaceResult, StepEvent
from falco.weights import WeightPaths, fetch_weights
from falco.weights.hub import weights_label


@dataclass(frozen=True)
class CheckedSettings:
    """A run's settings with their defaults filled in, every one checked (``FalcoPipeline.settings``)."""
    margins: tuple[float, ...]          # repeats dropped, in the order given
    optim: OptimConfig
    fake_k: int


@dataclass(frozen=True)
class _Prepared:
    """A photo's chosen faces before optimisation: crops, real features, inversion, fake pair."""
    photo: Image.Image
    chosen: list[int]
    aligned: list[AlignedFace]
    real: RealFeatures                  # [F] features of the real crops, computed once
    wplus_inversion: torch.Tensor       # [F, num_ws, D]
    fake_rows: torch.Tensor             # [F] bank rows
    w_fake: torch.Tensor                # [F, D]
    fake_k: int
    alignment: AlignmentCheck | None    # aligned inputs: the photo is the one face


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
            allocator.reuse_freed_memory()   # ~2x faster CPU steps; best called first thing (falco.allocator)
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
        """Images [B, 3, size, size] in [-1, 1] of W+ codes [B, num_ws, D], ``render_batch`` at a time (on the CPU one:
        a 1024 px image's activations take about 0.9 GiB there)."""
        with allocator.reusing():   # each image reuses the last one's memory (twice as fast on a CPU)
            return torch.cat([self.nets.generator(part) for part in wplus.split(render_batch(self.device))])

    def page_out(self, *networks: str) -> None:
        """Hand these networks' weights ("e4e", "generator", "arcface", "farl") back to the page cache until their next
        use, where they are mapped from their files (CPU): the process then holds the networks it runs, not every
        network it ever ran; the next use reads them again from memory, a fraction of a second for e4e's 1 GB
        (falco.allocator.page_out_mapped)."""
        allocator.page_out_mapped([p for name in networks for p in getattr(self.nets, name).parameters()])

    @property
    def inversion_size(self) -> int:
        """The side of the aligned crops e4e takes (a smaller crop is resized up to it)."""
        return self.nets.e4e.config["input_size"]

    def settings(self, margins: Sequence[float] | None = None, optim: OptimConfig | None = None,
                 fake_k: int | None = None) -> CheckedSettings:
        """A run's settings, for photos and clips alike: the defaults (m = DEFAULT_MARGIN, OptimConfig(), the bank's
        k_nearest) filled in and every rule of falco.checks applied (fake_k against this bank's size): a bad value
        is a FalcoError naming it, before any work."""
        optim = optim or OptimConfig()
        fake_k = BankConfig().k_nearest if fake_k is None else fake_k
        margins = check_run_settings((DEFAULT_MARGIN,) if margins is None else margins, optim, fake_k, len(self.bank))
        return CheckedSettings(margins, optim, fake_k)

    def loss(self, optim: OptimConfig) -> FalcoLoss:
        """The loss of an optimisation with these settings (its lambdas), on this engine's ArcFace and FaRL."""
        return FalcoLoss.for_config(self.nets.arcface, self.nets.farl, optim)

    def fake_w(self, rows: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """The fakes' w [len(rows), D] of these bank rows, on the engine's device."""
        return self.bank.w[torch.as_tensor(rows, dtype=torch.long)].to(self.device)

    def anonymize(self, photo: PhotoSource, faces: Sequence[int] | None = None,
                  margins: Sequence[float] | None = None, optim: OptimConfig | None = None,
                  fake_k: int | None = None, detections: list[DetectedFace] | None = None,
                  aligned: bool = False) -> Iterator[StepEvent | AnonymizationResult]:
        """StepEvent after every optimisation step, then one AnonymizationResult.

        faces: indices into ``detections`` (default: every usable face; an unusable one is
        refused); margins: the m values in [0, 1], each face runs once per m (default:
        DEFAULT_MARGIN alone); fake_k: the fake is drawn among this many nearest neighbours with
        ``optim.seed`` (1: the nearest).  ``detections``: those of an earlier ``detect`` on this
        photo, to skip detecting again.  ``aligned``: the photo is an FFHQ-aligned crop (FFHQ,
        CelebA-HQ): no detection, alignment or paste-back, the result's photos are the anonymized
        crop at the photo's size, and ``result.alignment`` says whether it looks aligned.  Bad
        settings are a FalcoError before any work (``settings``).
        """
        run = self.settings(margins, optim, fake_k)
        loss = self.loss(run.optim)
        prepared = self._prepare(photo, faces, detections, aligned, loss, run.fake_k, run.optim.seed)
        stream = self._optimize([prepared], run.margins, loss, run.optim)
        with closing(stream):
            for event in stream:
                yield event if isinstance(event, StepEvent) else event[0]

    def anonymize_batch(self, photos: Sequence[PhotoSource], margins: Sequence[float] | None = None,
                        optim: OptimConfig | None = None, fake_k: int | None = None, aligned: bool = False,
                        ) -> Iterator[StepEvent | list[AnonymizationResult | Exception]]:
        """``anonymize`` of several photos (every usable face of each) in one optimisation: StepEvents for the
        whole batch, then a list with, per photo, its AnonymizationResult or the error that turned it down
        (no face, not an image: the other photos go on).

        Adam is elementwise and each item's loss depends on its own latents only, so every photo gets the
        result a run of its own gives (to float rounding where a pass holds several items: OptimConfig.max_batch).
        """
        run = self.settings(margins, optim, fake_k)
        loss = self.loss(run.optim)
        outcomes: list[_Prepared | Exception] = []
        for photo in photos:
            try:
                outcomes.append(self._prepare(photo, None, None, aligned, loss, run.fake_k, run.optim.seed))
            except WeightsError:
                raise   # every photo would fail the same way
            except Exception as err:   # one bad photo must not stop the batch
                outcomes.append(err)
        prepared = [p for p in outcomes if isinstance(p, _Prepared)]
        results = iter(())
        if prepared:
            stream = self._optimize(prepared, run.margins, loss, run.optim)
            with closing(stream):
                for event in stream:
                    if isinstance(event, StepEvent):
                        yield event
                    else:
                        results = iter(event)
        yield [p if isinstance(p, Exception) else next(results) for p in outcomes]

    def paired(self, photo: PhotoSource, optim: OptimConfig | None = None, fake_k: int | None = None,
               aligned: bool = False) -> AnonymizationResult:
        """FALCO without its optimisation: where ``anonymize`` starts (each usable face's paired fake's w in the
        trained rows, its inversion elsewhere), rendered, judged and pasted back as ``anonymize`` does, so that
        the difference between the two is what the optimisation adds (falco.baselines' nearest-fake).  The same
        at every m, the result has none: its ``margins`` are (None,), and it has no W+ file."""
        run = self.settings(None, optim, fake_k)
        loss = self.loss(run.optim)
        prepared = self._prepare(photo, None, None, aligned, loss, run.fake_k, run.optim.seed)
        wplus = start_wplus(prepared.wplus_inversion, prepared.w_fake, run.optim.trained_rows)
        with allocator.reusing():
            return self._result(prepared, (None,), wplus, loss, run.optim)

    def refine(self, crops: Sequence[Image.Image], wplus: torch.Tensor, w_fake: torch.Tensor,
               margins: torch.Tensor, optim: OptimConfig, loss: FalcoLoss | None = None) -> torch.Tensor:
        """``optim.steps`` optimisation steps for aligned faces whose W+ [B, num_ws, D] is known already (a clip's
        frame: its inversion plus its person's offset), warm-started there instead of at the fake's w; each face
        against its own real crop, fake w [B, D] and m [B].  Returns the W+ after the last step.  ``loss``: one
        built earlier (``self.loss(optim)``), to build it once for many calls."""
        loss = loss or self.loss(optim)
        with torch.no_grad():
            real = loss.real_features(to_tensor(crops, self.device))
        start, stop = optim.trained_rows
        stream = optimize_latents(self.nets.generator, loss, real, wplus, w_fake, margins, optim,
                                  trained_start=wplus[:, start:stop])
        with closing(stream):
            for step in stream:
                wplus = step.wplus
        return wplus.detach()

    def _optimize(self, prepared: list[_Prepared], margins: tuple[float, ...], loss: FalcoLoss,
                  optim: OptimConfig) -> Iterator[StepEvent | list[AnonymizationResult]]:
        """Every chosen face of every photo at every m as one batch (photo-major, then face, then m)."""
        faces = sum(len(p.chosen) for p in prepared)
        face_of = torch.arange(faces, device=self.device).repeat_interleave(len(margins))
        labels = [(p.chosen[f], m) for p in prepared for f in range(len(p.chosen)) for m in margins]
        real = RealFeatures(*(torch.cat([getattr(p.real, name) for p in prepared]) for name in ("identity", "tokens")))
        wplus_real = torch.cat([p.wplus_inversion for p in prepared])[face_of]
        w_fake = torch.cat([p.w_fake for p in prepared])[face_of]
        wplus = start_wplus(wplus_real, w_fake, optim.trained_rows)   # the result if steps == 0
        stream = optimize_latents(self.nets.generator, loss, real.select(face_of), wplus_real, w_fake,
                                  torch.tensor(margins, device=self.device).repeat(faces), optim)
        with closing(stream):
            for step in stream:
                wplus = step.wplus
                show = step.step % max(optim.preview_every, 1) == 0 or step.step == step.total_steps
                previews = preview_images(step.image, optim.preview_size) if show else []
                yield StepEvent(step.step, step.total_steps, labels, previews, step.terms.as_lists(),
                                step.terms.identity_cosine.tolist())
        # Each photo's items are rendered and judged as in a run of its own (same shapes, same rounding).
        ends = torch.tensor([len(p.chosen) * len(margins) for p in prepared]).cumsum(0).tolist()
        with allocator.reusing():   # a stage of its own: the steps' memory went back when they ended
            results = [self._result(p, margins, wplus[end - len(p.chosen) * len(margins):end], loss, optim)
                       for p, end in zip(prepared, ends)]
        yield results

    @torch.no_grad()
    def _prepare(self, photo: PhotoSource, faces: Sequence[int] | None, detections: list[DetectedFace] | None,
                 aligned: bool, loss: FalcoLoss, fake_k: int, seed: int) -> _Prepared:
        photo = load_photo(photo, self.face_config)
        if aligned:
            if faces is not None or detections is not None:
                raise ValueError("an aligned input is one face: faces and detections do not apply")
            face, alignment = self._aligned_input(photo)
            chosen, crops_of = [0], [face]
        else:
            detections = self.analyzer.detect(photo) if detections is None else detections
            chosen, alignment = list(check_face_picks(faces, detections)), None
            crops_of = [align_face(photo, detections[i].landmarks, config=self.face_config) for i in chosen]
        crops = [a.image for a in crops_of]
        # Each stage of a run reuses freed memory inside it and gives it back at its end (falco.allocator): the
        # stages' peaks never add up.
        with allocator.reusing():
            real = loss.real_features(to_tensor(crops, self.device))
            wplus_inversion = self.invert(crops)
        self.page_out("e4e")   # 1 GB that runs once a photo: not held through the steps
        # The pairing embedding comes from the tokens the attribute loss needs anyway.
        fake_rows = self.bank.nearest(self.nets.farl.embed_tokens(real.tokens).cpu(), k=fake_k, seed=seed)
        # The inversions and fakes are rendered with the results: the first step (and preview) comes sooner.
        return _Prepared(photo, chosen, crops_of, real, wplus_inversion, fake_rows, self.fake_w(fake_rows), fake_k,
                         alignment)

    def _aligned_input(self, photo: Image.Image) -> tuple[AlignedFace, AlignmentCheck]:
        """The photo as its own aligned face, and whether it looks aligned: dlib's landmarks on a small copy
        against the FFHQ template (falco.faces.alignment_offset)."""
        face, offset = self.analyzer.as_aligned_face(photo)
        return face, AlignmentCheck.from_offset(offset, self.face_config.aligned_max_offset)

    @torch.no_grad()
    def _result(self, prepared: _Prepared, margins: tuple[float, ...], wplus: torch.Tensor, loss: FalcoLoss,
                optim: OptimConfig) -> AnonymizationResult:
        """The result of one photo from its items' W+ [faces x margins, num_ws, D]."""
        faces, size = len(prepared.chosen), self.face_config.aligned_size
        face_of = torch.arange(faces, device=self.device).repeat_interleave(len(margins))
        w_fake = prepared.w_fake[:, None].expand(-1, self.nets.generator.num_ws, -1)
        shown = self.render(torch.cat([prepared.wplus_inversion, w_fake, wplus]))
        inversions, fakes = ([to_image(x, size) for x in part] for part in (shown[:faces], shown[faces:2 * faces]))
        final = shown[2 * faces:]
        cosine = (loss.identity_embedding(final) * prepared.real.identity[face_of]).sum(-1).tolist()
        results = []
        for i, (f, m) in enumerate(zip(face_of.tolist(), margins * faces)):
            aligned, row = prepared.aligned[f], int(prepared.fake_rows[f])
            anonymized = to_image(final[i], size)
            distance = (math.nan if aligned.landmarks is None
                        else self.recognizer.distance(aligned.image, anonymized, aligned.landmarks))
            results.append(FaceResult(
                face_index=prepared.chosen[f], margin=m, aligned=aligned.image, inversion=inversions[f],
                fake=fakes[f], anonymized=anonymized, wplus=wplus[i].cpu(),
                wplus_inversion=prepared.wplus_inversion[f].cpu(), fake_index=row,
                fake_seed=int(self.bank.seeds[row]), identity_cosine=float(cosine[i]),
                recognizer_distance=distance))
        n, photo = len(margins), prepared.photo
        if prepared.alignment is not None:   # the photo is the face: the result at its size
            photos = [r.anonymized if r.anonymized.size == photo.size
                      else r.anonymized.resize(photo.size, Image.Resampling.LANCZOS) for r in results]
        else:
            photos = [paste_faces(photo, [(a, results[f * n + j].anonymized) for f, a in enumerate(prepared.aligned)],
                                  self.face_config) for j in range(n)]
        return AnonymizationResult(results, photos, margins, self._params(prepared, margins, optim),
                                   prepared.alignment)

    def _params(self, prepared: _Prepared, margins: tuple[float, ...], optim: OptimConfig) -> dict:
        return {"faces": prepared.chosen, "margins": list(margins), "optim": asdict(optim), "fake_k": prepared.fake_k,
                "fake_rows": prepared.fake_rows.tolist(), "fake_seeds": self.bank.seeds[prepared.fake_rows].tolist(),
                "bank": {"size": len(self.bank), **self.bank.config}, "weights": weights_label(self.source),
                "device": str(self.device), "falco_version": falco.__version__}
