"""The official checkpoints, each fetched from a list of public sources with fallback, and verified.

Every source is tried in order until one yields a file that passes its checks: the size and
sha256 pinned for that source (mirrors hold different bytes of the same weights, so a hash
belongs to a source, not to a file), then the caller's ``check`` (the strict layout check /
conversion of falco.models.io, whose loader unpickles with ``weights_only=True``).  A copy
already in the folder that verifies is used first, without network.  Hub sources go through
hf_hub_download (HF_ENDPOINT, HF_HUB_OFFLINE, resumed downloads); plain URLs are streamed into
the folder with a resumable ``.incomplete`` file; "package" sources are files of an installed
package.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from falco.errors import HubUnavailableError, WeightsError, first_line
from falco.weights.hub import answer_is_for_now, lacking_space, network_errors
from falco.weights.manifest import sha256_file

KINDS = ("hub", "url", "package")
LAYOUTS = ("official", "transformers-clip")
URL_ATTEMPTS = 4   # a dropped connection is resumed at once, as long as each attempt brought new bytes
OFFLINE_HINT = "run once with network access (or unset HF_HUB_OFFLINE)"

Check = Callable[[Path, "Source"], None]
Progress = Callable[[float | None], None]


@dataclass(frozen=True)
class Source:
    kind: str                      # "hub", "url" or "package"
    location: str                  # "owner/name:path/in/repo" | "https://..." | "face_recognition_models:models/<file>"
    sha256: str | None = None      # the bytes this source serves, where pinned
    size: int | None = None
    layout: str = "official"       # "official" checkpoint container, or "transformers-clip" (FaRL as transformers CLIP)
    revision: str | None = None    # Hub revision, where pinned

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.layout not in LAYOUTS:
            raise ValueError(f"source kind {self.kind!r} / layout {self.layout!r}: expected {KINDS} / {LAYOUTS}")
        if self.kind != "url" and ":" not in self.location:
            raise ValueError(f"{self.kind} source {self.location!r}: expected '<repo or package>:<path>'")

    def __str__(self) -> str:
        return f"{self.kind} {self.location}" + (f"@{self.revision}" if self.revision else "")

    @property
    def filename(self) -> str:
        """The file's own name at this source (its suffix tells io which reader applies)."""
        path = unquote(urlsplit(self.location).path) if self.kind == "url" else self.location.split(":", 1)[1]
        return PurePosixPath(path).name


@dataclass(frozen=True)
class OfficialFile:
    name: str                      # "e4e", "arcface", "farl", "dlib_landmarks", "dlib_recognition"
    filename: str
    sources: tuple[Source, ...]       # their origin and licence: falco.weights.licences


DLIB_LANDMARKS_SHA256 = "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"
DLIB_RECOGNITION_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
IR_SE50_SHA256 = "a035c768259b98ab1ce0e646312f48b9e1e218197a0f80ac6765e88f8b6ddf28"

# Sources in order: the most independent and durable first.  Unpinned sources are held to the caller's
# strict check alone; a pin that turns out wrong makes its source fail safely (refused, the next one used).
OFFICIAL_FILES: dict[str, OfficialFile] = {f.name: f for f in (
    OfficialFile(
        "e4e", "e4e_ffhq_encode.pt",
        (
            # hf_hub_download('public-data/e4e', 'e4e_ffhq_encode.pt') in hysts' HairCLIP Space (model.py,
            # mirrored as camenduru/HairCLIP-hf).
            Source("hub", "public-data/e4e:e4e_ffhq_encode.pt"),
            # The copy HairFastGAN (AIRI-Institute) downloads; also fetched by URL in several public apps.
            Source("hub", "AIRI-Institute/HairFastGAN:pretrained_models/encoder4editing/e4e_ffhq_encode.pt"),
            # Linked as "Download from HuggingFace" in a public README; hash and size from the issue.
            Source("hub", "zhengchong/e4e:e4e_ffhq_encode.pt",
                   sha256="2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999", size=1_201_649_680),
        )),
    OfficialFile(
        "arcface", "model_ir_se50.pth",
        (
            # Downloaded from this repo by splatviz / cgs-gan inversion code (facenet IR-SE50 for the ID loss).
            Source("hub", "Fubei/splatviz_inversion_checkpoints:model_ir_se50.pth",
                   sha256=IR_SE50_SHA256, size=175_367_323),
            # Same bytes per the issue; the file name in this repo could not be checked in public code.
            Source("hub", "lithiumice/ArcFace_PyTorch:model_ir_se50.pth", sha256=IR_SE50_SHA256, size=175_367_323),
        )),
    OfficialFile(
        "farl", "FaRL-Base-Patch16-LAIONFace20M-ep64.pth",
        (
            # The authors' release asset; the URL many public projects download (curl, torch.hub).
            Source("url", "https://github.com/FacePerceiver/FaRL/releases/download/pretrained_weights/"
                          "FaRL-Base-Patch16-LAIONFace20M-ep64.pth"),
            # FaRL converted to transformers' CLIPModel layout (used as CLIPModel.from_pretrained by FALCO's
            # authors' scripts and others); model.safetensors is what from_pretrained reads, not checked further.
            Source("hub", "Green-Sky/FaRL-Base-Patch16-LAIONFace20M-ep64:model.safetensors",
                   layout="transformers-clip"),
        )),
    OfficialFile(
        "dlib_landmarks", "shape_predictor_68_face_landmarks.dat",
        (
            # The PyPI package face_recognition ships (sha256 checked against the installed package).
            Source("package", "face_recognition_models:models/shape_predictor_68_face_landmarks.dat",
                   sha256=DLIB_LANDMARKS_SHA256, size=99_693_937),
            # Used by hysts' HairCLIP Space and many others.  Pinned to dlib.net's bytes (not checked for this
            # mirror: the same decompressed dlib.net file is expected).
            Source("hub", "public-data/dlib_face_landmark_model:shape_predictor_68_face_landmarks.dat",
                   sha256=DLIB_LANDMARKS_SHA256, size=99_693_937),
            # Linked by ComfyUI_FaceAnalysis and others; a public weights table records this very sha256 for it.
            Source("hub", "matt3ounstable/dlib_predictor_recognition:shape_predictor_68_face_landmarks.dat",
                   sha256=DLIB_LANDMARKS_SHA256, size=99_693_937),
        )),
    OfficialFile(
        "dlib_recognition", "dlib_face_recognition_resnet_model_v1.dat",
        (
            Source("package", "face_recognition_models:models/dlib_face_recognition_resnet_model_v1.dat",
                   sha256=DLIB_RECOGNITION_SHA256, size=22_466_066),
            # Linked by ComfyUI_FaceAnalysis and others; a public weights table records this very sha256 for it.
            Source("hub", "matt3ounstable/dlib_predictor_recognition:dlib_face_recognition_resnet_model_v1.dat",
                   sha256=DLIB_RECOGNITION_SHA256, size=22_466_066),
        )),
)}


def fetch_official(name: str, folder: Path, check: Check | None = None, progress: Progress | None = None,
                   sources: Sequence[Source] | None = None) -> tuple[Path, Source]:
    """The verified local copy of an official file (kept in `folder`), and the source it came from. Tries the
    sources in order; a source that fails (not found, network error/timeout, wrong size, wrong sha256, or
    `check(path, source)` raising WeightsError — the caller's strict layout check / conversion) has its file
    deleted and the next is tried. All failing: WeightsError (HubUnavailableError if every failure was the network
    failing for now) naming every source tried and why, one line each joined by '; '. A file already in `folder`
    that verifies is used without network (second start, offline)."""
    if name not in OFFICIAL_FILES:
        raise ValueError(f"unknown official file {name!r}; expected one of {list(OFFICIAL_FILES)}")
    return fetch_file(OFFICIAL_FILES[name], folder, check, progress, sources)


def fetch_file(entry: OfficialFile, folder: Path, check: Check | None = None, progress: Progress | None = None,
               sources: Sequence[Source] | None = None) -> tuple[Path, Source]:
    """fetch_official for any file described as an OfficialFile (the evaluation networks' too)."""
    name, folder = entry.name, Path(folder)
    sources = tuple(entry.sources if sources is None else sources)
    report = progress or (lambda fraction: None)
    failures: dict[int, WeightsError] = {}

    # First the copies already here (and installed packages): no network on a second start or offline.
    for index, source in enumerate(sources):
        path = _local_path(folder, name, source)
        if path.is_file():
            try:
                return _verified(path, source, folder, name, check, report), source
            except WeightsError as err:
                failures[index] = err
    for index, source in enumerate(sources):
        if index in failures and source.kind == "package":
            continue   # a refused copy of a download was deleted: that source is asked again, afresh
        try:
            path = _obtain(source, folder, name, report)
        except WeightsError as err:
            failures[index] = err
            if source.kind != "package" and not isinstance(err, HubUnavailableError):
                shutil.rmtree(_source_dir(folder, name, source), ignore_errors=True)   # kept only to resume
            continue
        try:
            return _verified(path, source, folder, name, check, report), source
        except WeightsError as err:
            failures[index] = err

    reasons = "; ".join(f"{sources[i]}: {first_line(err)}" for i, err in sorted(failures.items()))
    message = f"No source of {entry.filename} ({name}) could be used: {reasons or 'none given'}."
    if _offline():
        raise WeightsError(f"{message} HF_HUB_OFFLINE is set: {OFFLINE_HINT}.")
    for_now = bool(failures) and all(isinstance(err, HubUnavailableError) for err in failures.values())
    raise (HubUnavailableError if for_now else WeightsError)(message)


def served_revision(folder: Path, name: str, source: Source) -> str | None:
    """The Hub commit a file fetched into ``folder`` came from: the source's pinned revision, else the one
    hf_hub_download recorded beside the file; None for other sources or where unknown."""
    if source.kind != "hub" or source.revision:
        return source.revision
    try:   # huggingface_hub's record of a download into a local_dir (a private module: read where it exists)
        from huggingface_hub._local_folder import read_download_metadata
        metadata = read_download_metadata(_source_dir(Path(folder), name, source), source.location.split(":", 1)[1])
    except (ImportError, OSError, ValueError):
        return None
    return getattr(metadata, "commit_hash", None)


def _verified(path: Path, source: Source, folder: Path, name: str, check: Check | None, report: Progress) -> Path:
    """``path`` if it passes the source's pins and the caller's check; else its file is deleted (never an
    installed package's) and WeightsError says why."""
    try:
        actual_size = path.stat().st_size
        if source.size is not None and actual_size != source.size:
            raise WeightsError(f"{actual_size} bytes, expected {source.size}")
        if source.sha256 is not None and (actual := sha256_file(path)) != source.sha256:
            raise WeightsError(f"sha256 {actual} does not match the pinned {source.sha256}")
        report(1.0)   # the download is done and verified: before the caller's check, which is its next step
        if check is not None:
            check(path, source)
    except WeightsError:
        if source.kind != "package":
            shutil.rmtree(_source_dir(folder, name, source), ignore_errors=True)
        raise
    return path


def _obtain(source: Source, folder: Path, name: str, report: Progress) -> Path:
    if source.kind == "package":
        return _package_path(source)
    if _offline():
        raise WeightsError("skipped, HF_HUB_OFFLINE is set and no copy is in the folder")
    target = _source_dir(folder, name, source)
    if source.size is not None:
        _ensure_space(source.size, target)
    if source.kind == "hub":
        return _from_hub(source, target, report)
    return _from_url(source.location, target / source.filename, source.size, report)


def _source_dir(folder: Path, name: str, source: Source) -> Path:
    # One folder per source: mirrors hold different bytes (and layouts) under the same name.
    where = source.location.split(":", 1)[0] if source.kind == "hub" else urlsplit(source.location).netloc
    slug = f"{source.kind}--{where}" + (f"--{source.revision}" if source.revision else "")
    return folder / name / re.sub(r"[^A-Za-z0-9._-]+", "--", slug)


def _local_path(folder: Path, name: str, source: Source) -> Path:
    if source.kind == "package":
        try:
            return _package_path(source)
        except WeightsError:
            return folder / name / "package-not-installed"   # no file: tried (and reported) as a download
    if source.kind == "hub":
        return _source_dir(folder, name, source) / source.location.split(":", 1)[1]
    return _source_dir(folder, name, source) / source.filename


def _package_path(source: Source) -> Path:
    return installed_file(*source.location.split(":", 1))


def installed_file(package: str, relative: str) -> Path:
    """A file shipped inside an installed package, found without importing it (face_recognition_models imports
    the removed pkg_resources); WeightsError when the package or file is missing."""
    from importlib.util import find_spec
    spec = find_spec(package)
    path = Path(spec.submodule_search_locations[0]) / relative if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise WeightsError(f"the {package} package is not installed (pip install {package})")
    return path


def _offline() -> bool:
    # Read now, not at import: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported.
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _ensure_space(size: int, directory: Path) -> None:
    if problem := lacking_space(size, directory):
        raise WeightsError(f"not enough disk space: {problem}")


def _reporting_tqdm(report: Progress) -> type:
    """huggingface_hub's tqdm (honours disable_progress_bars; size, rate and ETA in the terminal) that also
    reports the fraction done, counted here: a disabled bar stops counting."""
    from huggingface_hub.utils import tqdm

    class ReportingTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.done, self.expected = kwargs.get("initial") or 0, kwargs.get("total")

        def update(self, n=1):
            self.done += n or 0
            report(min(1.0, self.done / self.expected) if self.expected else None)
            return super().update(n)

    return ReportingTqdm


def _from_hub(source: Source, target: Path, report: Progress) -> Path:
    """hf_hub_download into the source's folder (resumable, no second copy in the Hub cache)."""
    import inspect

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    repo_id, filename = source.location.split(":", 1)
    options = {"tqdm_class": _reporting_tqdm(report)} \
        if "tqdm_class" in inspect.signature(hf_hub_download).parameters else {}
    try:
        # The endpoint read now: huggingface_hub fixes its URL template when it is imported.
        return Path(hf_hub_download(repo_id, filename, revision=source.revision, local_dir=target,
                                    endpoint=os.environ.get("HF_ENDPOINT") or None, **options))
    except LocalEntryNotFoundError as err:   # the Hub could not be reached (a subclass of EntryNotFoundError)
        raise HubUnavailableError("the Hub could not be reached") from err
    except RevisionNotFoundError as err:
        raise WeightsError(f"revision {source.revision} not found") from err
    except RepositoryNotFoundError as err:   # also private and gated repos
        raise WeightsError("repo not found (or private)") from err
    except EntryNotFoundError as err:
        raise WeightsError("file not found in the repo") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        raise _http_error(status) from err
    except Exception as err:   # OSError, transport errors of the HTTP client (they vary across versions)
        raise _failure(err) from err


def _from_url(url: str, path: Path, size: int | None, report: Progress) -> Path:
    """Streams ``url`` into ``path`` through ``path.incomplete``, resumed with an HTTP Range request when a
    connection drops (at once while bytes keep coming; on the next run otherwise)."""
    import httpx

    partial = path.with_name(path.name + ".incomplete")
    path.parent.mkdir(parents=True, exist_ok=True)
    bar_class = _reporting_tqdm(report)
    for attempt in range(URL_ATTEMPTS):
        have = partial.stat().st_size if partial.is_file() else 0
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with httpx.stream("GET", url, headers=headers, follow_redirects=True,
                              timeout=httpx.Timeout(60, connect=15)) as response:
                if response.status_code == 416 and have:   # the partial file is longer than this file: start over
                    partial.unlink()
                    continue
                if response.status_code not in (200, 206):
                    raise _http_error(response.status_code)
                if response.status_code == 200:   # the server ignored the Range: start over
                    have = 0
                length = response.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else size
                if total is not None:
                    _ensure_space(total - have, path.parent)
                with open(partial, "ab" if have else "wb") as out, \
                        bar_class(total=total, initial=have, unit="B", unit_scale=True, desc=path.name) as bar:
                    for chunk in response.iter_bytes():   # as the bytes arrive: a dropped connection loses none
                        out.write(chunk)
                        bar.update(len(chunk))
            partial.replace(path)
            return path
        except network_errors() as err:
            arrived = partial.is_file() and partial.stat().st_size > have
            if not arrived or attempt == URL_ATTEMPTS - 1:
                raise HubUnavailableError(f"network error ({type(err).__name__}: {first_line(err)})") from err
        except WeightsError:
            raise
        except Exception as err:
            raise _failure(err) from err
    raise HubUnavailableError("the download kept failing")


def _http_error(status: int | None) -> WeightsError:
    for_now = answer_is_for_now(status)
    reason = "the file is not there" if status in (401, 403, 404, 410) else "try again later"
    return (HubUnavailableError if for_now else WeightsError)(f"answered HTTP {status or 'error'} ({reason})")


def _failure(err: Exception) -> WeightsError:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return WeightsError("the disk filled up")
    for_now = isinstance(err, network_errors())
    return (HubUnavailableError if for_now else WeightsError)(f"{type(err).__name__}: {first_line(err)}")
