"""What a weight set is: its artifacts, the manifest of their sizes and sha256 hashes, and their checks.

The Hub layout is one file per artifact (names in ``ARTIFACTS``) plus ``manifest.json``
(filename, size and sha256 of each) and a model card.  ``weights/manifest.json`` in this
project pins the default repo: its revision (a commit hash) and hashes come from the
publishing command.  A set made from the official checkpoints also records the source that
served each official file and what built the set (optional fields: older manifests lack them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from falco.config import DEFAULT_WEIGHTS_REPO
from falco.errors import WeightsError
from falco.models import NETWORKS  # noqa: F401  (re-exported: the artifacts that are networks)
from falco.output_files import save_json

ARTIFACTS: dict[str, str] = {
    "generator": "generator.safetensors",
    "e4e": "e4e.safetensors",
    "arcface": "arcface.safetensors",
    "farl": "farl.safetensors",
    "dlib_landmarks": "shape_predictor_68_face_landmarks.dat",
    "dlib_recognition": "dlib_face_recognition_resnet_model_v1.dat",
    "fake_bank": "fake_bank.safetensors",
}
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
PROJECT_MANIFEST = Path(__file__).resolve().parents[2] / "weights" / MANIFEST_NAME
COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
HASH_CHUNK = 1 << 20
VERIFY_CHUNK = 1 << 26


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
class Origin:
    """The source that served an official file of a set (falco.weights.official.Source), and the bytes it served."""
    kind: str                    # "hub", "url" or "package"
    location: str                # "owner/name:path/in/repo" | "https://..." | "package:path/in/package"
    revision: str | None         # the Hub commit it came from, where known
    layout: str                  # "official" or "transformers-clip"
    size: int
    sha256: str
    artifacts: tuple[str, ...]   # the artifacts converted from it

    def describe(self) -> str:
        """Where the file came from, in words (the model card and the log)."""
        where, _, path = self.location.partition(":")
        if self.kind == "hub":
            text = f"the Hub repo `{where}`, file `{path}`"
            text += f" at revision `{self.revision}`" if self.revision else ""
        elif self.kind == "package":
            text = f"the installed PyPI package `{where}`, file `{path}`"
        else:
            text = f"`{self.location}`"
        layout = " (the weights in transformers' CLIP layout)" if self.layout == "transformers-clip" else ""
        return f"{text}{layout}, {self.size} bytes, sha256 `{self.sha256}`"

    @classmethod
    def from_dict(cls, data: dict) -> Origin:
        return cls(**{**data, "artifacts": tuple(data["artifacts"])})


# Build.by of a random-noise set (falco.weights.random_set): its networks judge nothing (falco.evaluate says so).
RANDOM_BUILD = "`python -m falco.weights random`"


@dataclass(frozen=True)
class Build:
    """What built a set from the official checkpoints: the app's first start or a command, and where."""
    by: str                      # "the app's first start", "`python -m falco.weights prepare`", ...
    falco_version: str
    device: str | None           # where the fake bank was built (None: a bank was given)
    bank_size: int | None

    def describe(self) -> str:
        bank = f"; the fake bank of {self.bank_size} fakes built on {self.device}" if self.bank_size else ""
        return f"{self.by} (falco {self.falco_version}{bank})"


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
    sources: dict[str, Origin] = field(default_factory=dict)   # official file name -> its origin
    built: Build | None = None

    @property
    def random(self) -> bool:
        """A random-noise set: built by ``python -m falco.weights random`` (older ones say so in their note)."""
        return (self.built is not None and self.built.by == RANDOM_BUILD) or "RANDOM NOISE" in self.note

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
            sources = {name: Origin.from_dict(o) for name, o in (data.get("sources") or {}).items()}
            built = Build(**data["built"]) if data.get("built") else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise WeightsError(f"The weights manifest {path} is unreadable ({err}).") from err
        return cls(data.get("repo_id"), data.get("revision"), artifacts, data.get("note", ""), sources, built)

    def write(self, path: str | Path) -> Path:
        """The manifest file, written whole or not at all (a folder whose manifest exists is complete)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": MANIFEST_FORMAT, "repo_id": self.repo_id, "revision": self.revision, "note": self.note,
                "artifacts": {name: {"filename": a.filename, "size": a.size, "sha256": a.sha256,
                                     "description": a.description} for name, a in self.artifacts.items()}}
        if self.sources:   # only where known: a manifest without them keeps its bytes
            data["sources"] = {name: asdict(o) for name, o in self.sources.items()}
        if self.built:
            data["built"] = asdict(self.built)
        return save_json(path, data, final_newline=True)

    def origin_of(self, artifact: str) -> Origin | None:
        """The origin of the official file that ``artifact`` was converted from, where recorded."""
        return next((o for o in self.sources.values() if artifact in o.artifacts), None)

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
def background_verifier() -> Iterator[Callable[[Path, Artifact, str, bool], None]]:
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


