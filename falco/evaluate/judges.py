"""The evaluation networks ("judges"), fetched from their public sources at first use, verified, loaded once.

    FaceNet (casia, vgg)  re-identification: facenet-pytorch's two released InceptionResnetV1 state dicts
    MTCNN                 the second face detector: facenet-pytorch's pnet.pt, rnet.pt, onet.pt
    FID Inception         torch-fidelity's InceptionV3 (what torchmetrics' FrechetInceptionDistance runs)
    probe encoder         an open_clip ViT-B/32 (LAION-2B) for the attribute linear probe: not FaRL, which
                          the optimisation itself uses

Each file is fetched like the official checkpoints (falco.weights.official: sources in order, sha256 pinned
where known, resumable, a verified copy used offline) and checked strictly: its keys and shapes must be the
network's, read with ``torch.load(weights_only=True)`` or safetensors only.  A weights folder with random
judges in the same layouts under ``evaluation/`` (falco.evaluate.random_judges) uses those instead, so a whole
run works offline.  Every judge's provenance (its file, sha256 and origin, or "random") goes into metrics.json, so
that a report can never pass noise off as a result.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from falco.errors import WeightsError, first_line
from falco.evaluate.facenet import CASIA_CLASSES, VGGFACE2_CLASSES, InceptionResnetV1
from falco.evaluate.mtcnn import MTCNN, NETS
from falco.models.io import build_strict, check_layout
from falco.weights.hub import progress_bars
from falco.weights.manifest import MANIFEST_NAME, Manifest, sha256_file
from falco.weights.official import OfficialFile, Source, fetch_file

EVALUATION_WEIGHTS_ENV = "FALCO_EVALUATION_WEIGHTS"
RANDOM_SUBFOLDER = "evaluation"        # random judges' folder inside a weights folder (random_judges)
PROBE_MODEL = "ViT-B-32"               # open_clip's built-in config of the probe's checkpoint
PROBE_FOLDER = "probe"                 # open_clip "local-dir:" folder of a random set's probe
PUBLIC = "public sources"
RANDOM = "random"                      # a provenance's origin when the network is noise
# The networks each judge name stands for, as metrics.json's "judges" lists them.
JUDGE_NETWORKS = {
    "facenet_casia": "FaceNet InceptionResnetV1, CASIA-WebFace", "facenet_vgg": "FaceNet InceptionResnetV1, VGGFace2",
    "pnet": "MTCNN P-Net", "rnet": "MTCNN R-Net", "onet": "MTCNN O-Net", "fid_inception": "FID InceptionV3",
    "probe": f"attribute probe encoder, open_clip {PROBE_MODEL}", "arcface": "ArcFace IR-SE50 (the loss's own)",
    "dlib_landmarks": "dlib 68 landmarks", "dlib_recognition": "dlib face recogniser",
}

FACENET_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
FACENET_DATA = "https://raw.githubusercontent.com/timesler/facenet-pytorch/master/data/"
FID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
MTCNN_SHA256 = {   # the files facenet-pytorch 2.6.0 ships (checked against its wheel)
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}

EVALUATION_FILES: dict[str, OfficialFile] = {f.name: f for f in (
    # The release assets facenet-pytorch's InceptionResnetV1(pretrained=...) downloads.  The casia file is held
    # to its strict layout alone; the vggface2 hash is the one a public project pins for this asset.
    OfficialFile("facenet_casia", "20180408-102900-casia-webface.pt",
                 (Source("url", FACENET_RELEASE + "20180408-102900-casia-webface.pt"),)),
    OfficialFile("facenet_vgg", "20180402-114759-vggface2.pt",
                 (Source("url", FACENET_RELEASE + "20180402-114759-vggface2.pt",
                         sha256="281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b"),)),
    *(OfficialFile(name, f"{name}.pt", (
        Source("package", f"facenet_pytorch:data/{name}.pt", sha256=MTCNN_SHA256[name]),   # where installed
        Source("url", FACENET_DATA + f"{name}.pt", sha256=MTCNN_SHA256[name]),
    )) for name in NETS),
    # torch-fidelity's release (torchmetrics' default download); pytorch-fid serves the same bytes (both names
    # carry the sha256's first digits, which torch.hub checks), pinned to the hash a public project records.
    OfficialFile("fid_inception", "weights-inception-2015-12-05-6726825d.pth", (
        Source("url", "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                      "weights-inception-2015-12-05-6726825d.pth", sha256=FID_SHA256),
        Source("url", "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                      "pt_inception-2015-12-05-6726825d.pth", sha256=FID_SHA256),
    )),
    # open_clip's ViT-B-32 laion2b_s34b_b79k: the safetensors file its hf-hub loader prefers.
    OfficialFile("probe", "open_clip_model.safetensors",
                 (Source("hub", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K:open_clip_model.safetensors"),)),
)}


class ProbeEncoder:
    """An open_clip image tower: PIL images -> L2-normalised embeddings [N, D] (float32, CPU)."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                 batch_size: int = 32):
        self.model, self.preprocess, self.batch_size = model.eval().requires_grad_(False), preprocess, batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images[start:start + self.batch_size]])
            parts.append(F.normalize(self.model.encode_image(batch.to(self.device)).float(), dim=-1).cpu())
        return torch.cat(parts) if parts else torch.zeros(0, self.model.visual.output_dim)


@dataclass(frozen=True)
class EvaluationPaths:
    """Local, verified copy of each evaluation file."""
    source: str                       # PUBLIC or the weights folder they came from
    facenet_casia: Path               # 20180408-102900-casia-webface.pt (state dict, logits of 10575 classes)
    facenet_vgg: Path                 # 20180402-114759-vggface2.pt (state dict, logits of 8631 classes)
    pnet: Path
    rnet: Path
    onet: Path
    fid_inception: Path               # torch-fidelity's weights-inception-2015-12-05-6726825d.pth layout
    probe_model: str                  # open_clip model name (PROBE_MODEL) or "local-dir:<folder>"
    probe_weights: Path | None        # its open_clip_model.safetensors (None: inside the local-dir folder)
    origins: dict[str, Source] | None = None   # the source that served each file; none: random judges

    def provenance(self) -> dict[str, dict]:
        """Per judge file: the network, its file name, sha256 and origin (the URL, Hub file or package it came
        from, verified against the pinned hash where one is known; or RANDOM)."""
        folder = Path(self.probe_model.removeprefix("local-dir:"))
        files = {name: getattr(self, name) for name in EVALUATION_FILES if name != "probe"}
        files["probe"] = self.probe_weights or folder / EVALUATION_FILES["probe"].filename
        result = {}
        for name, path in files.items():
            source = (self.origins or {}).get(name)
            result[name] = {"network": JUDGE_NETWORKS[name], "file": EVALUATION_FILES[name].filename,
                            "sha256": (source.sha256 if source is not None else None) or sha256_file(path),
                            "origin": RANDOM if source is None else source.location}
        return result


@dataclass
class Judges:
    facenet: dict[str, InceptionResnetV1]   # "casia", "vgg"
    mtcnn: MTCNN
    fid_weights: Path                       # torchmetrics' FrechetInceptionDistance(feature_extractor_weights_path=)
    probe_encoder: ProbeEncoder
    device: torch.device
    provenance: dict[str, dict] | None = None   # EvaluationPaths.provenance()


def evaluation_folder() -> Path:
    """Where downloads are kept: ``$FALCO_EVALUATION_WEIGHTS``, else ``$HF_HOME/falco/evaluation-weights``."""
    if os.environ.get(EVALUATION_WEIGHTS_ENV):
        return Path(os.environ[EVALUATION_WEIGHTS_ENV]).expanduser()
    from huggingface_hub import constants
    return Path(constants.HF_HOME) / "falco" / "evaluation-weights"


def random_judges_folder(source: str | Path | None) -> Path | None:
    """The ``evaluation/`` folder of a local weights folder that has one (a random set), else None: the judges
    then come from their public sources, whatever set anonymizes."""
    if source is None:
        return None
    folder = Path(source).expanduser() / RANDOM_SUBFOLDER
    return folder.resolve() if folder.is_dir() else None


def fetch_evaluation_weights(source: str | Path | None = None, progress: bool = True) -> EvaluationPaths:
    """The evaluation files: from a folder with random judges (its ``evaluation/`` subfolder, made by
    falco.evaluate.random_judges) when ``source`` is one, else from their public sources (downloaded once,
    verified)."""
    if (folder := random_judges_folder(source)) is not None:
        fetched = {name: folder / entry.filename for name, entry in EVALUATION_FILES.items() if name != "probe"}
        missing = [path.name for path in fetched.values() if not path.is_file()]
        if missing or not (folder / PROBE_FOLDER).is_dir():
            raise WeightsError(f"The evaluation folder {folder} lacks {', '.join(missing) or PROBE_FOLDER}; "
                               "make it again with python -m falco.evaluate.random_judges.")
        for name, path in fetched.items():
            CHECKS[name](path, None)
        probe_model, probe_weights, origins = f"local-dir:{folder / PROBE_FOLDER}", None, {}
    else:
        with progress_bars(progress):
            served = {name: fetch_file(entry, evaluation_folder(), check=CHECKS[name])
                      for name, entry in EVALUATION_FILES.items()}
        fetched = {name: path for name, (path, _) in served.items()}
        origins = {name: source for name, (_, source) in served.items()}
        probe_model, probe_weights = PROBE_MODEL, fetched.pop("probe")
    return EvaluationPaths(str(folder or PUBLIC), **fetched, probe_model=probe_model, probe_weights=probe_weights,
                           origins=origins)


def load_judges(source: str | Path | None = None, device: str | torch.device = "cpu",
                progress: bool = True) -> Judges:
    """Every judge loaded once, in eval mode, on ``device``."""
    paths = fetch_evaluation_weights(source, progress)
    device = torch.device(device)
    facenet = {"casia": load_facenet(paths.facenet_casia, device), "vgg": load_facenet(paths.facenet_vgg, device)}
    mtcnn = MTCNN(**{name: _build(NETS[name], {}, read_state(getattr(paths, name)), getattr(paths, name))
                     for name in NETS}).to(device)
    return Judges(facenet, mtcnn, paths.fid_inception, load_probe_encoder(paths, device), device,
                  paths.provenance())


def weight_set_provenance(paths, names: Sequence[str]) -> dict[str, dict]:
    """Provenance of the judges a weight set gives (ArcFace, dlib's models: falco.weights.WeightPaths): RANDOM for
    the networks of a random set (its manifest says so: Manifest.random), whose dlib files are dlib's real ones."""
    # The manifest beside the files: a local folder's, or the Hub snapshot's.
    manifest = next((folder / MANIFEST_NAME for folder in (Path(paths[names[0]]).parent, Path(paths.source))
                     if (folder / MANIFEST_NAME).is_file()), None) if names else None
    random_set = manifest is not None and Manifest.load(manifest).random
    where = f"local folder {Path(paths.source).name}" if Path(paths.source).is_dir() else f"weight set {paths.source}"
    result = {}
    for name in names:
        path = paths[name]
        result[name] = {"network": JUDGE_NETWORKS[name], "file": path.name, "sha256": sha256_file(path),
                        "origin": RANDOM if random_set and not name.startswith("dlib_") else where}
    return result


def random_judges(provenance: Mapping[str, dict] | None) -> list[str]:
    """The judges of a provenance whose networks are noise."""
    return [name for name, entry in (provenance or {}).items() if entry.get("origin") == RANDOM]


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict of tensors, unpickled with weights_only=True."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise WeightsError(f"{path.name} cannot be loaded as a plain tensor checkpoint ({first_line(err)}).") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path.name} is not a state dict of tensors.")
    return dict(state)


def _build(cls, config: dict, state: Mapping[str, torch.Tensor], path: Path) -> torch.nn.Module:
    return build_strict(cls, config, state, path).eval()


def facenet_config(state: Mapping[str, torch.Tensor], path: Path) -> dict:
    """What a FaceNet state dict implies: its width (the stem's channels), units per stage, embedding size and
    classifier rows (the released files: 32 channels, 5/10/5 units, 512, 10575 or 8631 classes)."""
    try:
        repeats = [len({k.split(".")[1] for k in state if k.startswith(f"repeat_{i}.")}) for i in (1, 2, 3)]
        return dict(width_divisor=32 // state["conv2d_1a.conv.weight"].shape[0], repeats=repeats,
                    embedding_dim=state["last_linear.weight"].shape[0],
                    num_classes=state["logits.weight"].shape[0] if "logits.weight" in state else None)
    except (KeyError, IndexError, ZeroDivisionError) as err:
        raise WeightsError(f"{path.name} does not match the InceptionResnetV1 layout (no {err}).") from err


def load_facenet(path: Path, device: torch.device | str = "cpu") -> InceptionResnetV1:
    state = read_state(path)
    return _build(InceptionResnetV1, facenet_config(state, path), state, path).to(device)


def fid_layout() -> dict[str, torch.Tensor]:
    """torch-fidelity's FeatureExtractorInceptionV3 keys and shapes: torchvision's InceptionV3 with 1008 classes
    and no auxiliary head has exactly them (tests/test_eval_networks.py checks it against torch-fidelity)."""
    from torchvision.models import inception_v3
    with torch.device("meta"):
        return inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).state_dict()


def probe_layout(model_cfg: dict | None = None) -> dict[str, torch.Tensor]:
    import open_clip
    with torch.device("meta"):
        if model_cfg is None:
            return open_clip.create_model(PROBE_MODEL).state_dict()
        from open_clip.model import CLIP
        return CLIP(**model_cfg).state_dict()


def _check_layout(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: Path,
                  network: str) -> None:
    # A file saved before PyTorch 0.4.1 has no num_batches_tracked; batch norm accepts it without.
    check_layout(state, expected, path.name, network, optional=lambda key: key.endswith("num_batches_tracked"))


def _check_facenet(released_classes: int) -> Callable[[Path, Source | None], None]:
    def check(path: Path, source: Source | None) -> None:
        state = read_state(path)
        config = facenet_config(state, path)
        with torch.device("meta"):
            expected = InceptionResnetV1(**config).state_dict()
        _check_layout(state, expected, path, "InceptionResnetV1")
        released = dict(InceptionResnetV1.RELEASED, num_classes=released_classes)
        if source is not None and config != released:   # a download must be the released network itself
            raise WeightsError(f"{path.name} is an InceptionResnetV1 with {config}, not the released {released}.")
    return check


def _check_mtcnn(name: str) -> Callable[[Path, Source | None], None]:
    def check(path: Path, source: Source | None) -> None:
        with torch.device("meta"):
            expected = NETS[name]().state_dict()
        _check_layout(read_state(path), expected, path, name)
    return check


def _check_fid(path: Path, source: Source | None) -> None:
    _check_layout(read_state(path), fid_layout(), path, "FID InceptionV3")


def _check_probe(path: Path, source: Source | None) -> None:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="meta") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except Exception as err:   # safetensors raises its own error types for a damaged header
        raise WeightsError(f"{path.name} is not a readable safetensors file ({err}).") from err
    _check_layout({k: torch.empty(s, device="meta") for k, s in shapes.items()}, probe_layout(), path,
                  f"open_clip {PROBE_MODEL}")


def _check_probe_folder(folder: Path) -> dict:
    try:
        model_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    except (OSError, ValueError, KeyError) as err:
        raise WeightsError(f"{folder.name}/open_clip_config.json is missing or has no model_cfg ({err}).") from err
    return model_cfg


CHECKS: dict[str, Callable[[Path, Source | None], None]] = {
    "facenet_casia": _check_facenet(CASIA_CLASSES), "facenet_vgg": _check_facenet(VGGFACE2_CLASSES),
    "fid_inception": _check_fid,
    "probe": _check_probe, **{name: _check_mtcnn(name) for name in NETS},
}


def load_probe_encoder(paths: EvaluationPaths, device: torch.device | str = "cpu") -> ProbeEncoder:
    import open_clip
    if paths.probe_weights is None:   # a random set's local-dir folder: its own config, open_clip's loader
        _check_probe_folder(Path(paths.probe_model.removeprefix("local-dir:")))
        model, _, preprocess = open_clip.create_model_and_transforms(paths.probe_model, device=device)
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(
            paths.probe_model, pretrained=str(paths.probe_weights), device=device)
    return ProbeEncoder(model, preprocess)
