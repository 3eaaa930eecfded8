"""Where the weights come from: a local folder, or a Hub repo fetched at a pinned commit and verified.

Until a repo is pinned in ``weights/manifest.json``, or for any other repo, the repo's own
``manifest.json`` is read first and the artifacts are downloaded at the commit it was read
from, so one run never mixes files of two commits.  Every Hub failure becomes one
WeightsError line; HubUnavailableError where the Hub or the network fails for now.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from falco.config import DEFAULT_WEIGHTS_REPO, WEIGHTS_REPO_ENV, weights_source
from falco.errors import HubUnavailableError, WeightsError, first_line
from falco.weights.manifest import (
    ARTIFACTS,
    COMMIT_HASH,
    MANIFEST_NAME,
    PROJECT_MANIFEST,
    Manifest,
    background_verifier,
)


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
    if not is_repo_id(repo_id):
        raise WeightsError(f"{source!r} is neither a weights folder nor a Hub repo id (user/name).")
    return WeightSource(repo_id=repo_id, revision=revision or None)


def is_repo_id(text: str) -> bool:
    """Whether ``text`` is a Hub repo id by huggingface_hub's own rule (an owner is not required)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def is_published(source: str | None = None, manifest: Manifest | str | Path | None = None) -> bool:
    """Whether ``source`` names a weight set that exists as such: a folder, a repo other than the project's, a
    revision asked for, or the project's repo once its manifest (``weights/manifest.json``) pins it.  While
    nothing is pinned, the project's repo has no set: a first start prepares one from the official checkpoints."""
    src = parse_source(source)
    if src.folder is not None or src.repo_id != DEFAULT_WEIGHTS_REPO or src.revision is not None:
        return True
    pinned = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest or PROJECT_MANIFEST)
    return pinned.repo_id == src.repo_id and pinned.pins(ARTIFACTS)


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


def weights_label(source: str) -> str:
    """How records name the weights: a Hub repo as given (user/name[@revision]), a local folder by its name only,
    so that no record (the app's downloads included) shows a server path.  Resumes compare ``source`` itself."""
    return f"local folder {Path(source).name}" if Path(source).is_absolute() else source


def check_names(names: Iterable[str] | None) -> tuple[str, ...]:
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
    names = check_names(names)
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
    with background_verifier() as check:
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
    with background_verifier() as check:
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
def progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub's download bars hidden in the block unless ``enabled`` (as they were after it)."""
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
    # The app and the command line both take --weights, which wins over the variable: name both.
    local_hint = f"or point --weights (or {WEIGHTS_REPO_ENV}) at a local weights folder"
    offline_hint = (f"HF_HUB_OFFLINE is set and {filename} is not in the cache {cache}: run once with network "
                    f"access (or unset HF_HUB_OFFLINE), {local_hint}.")
    try:
        with progress_bars(progress):
            return Path(hf_hub_download(repo_id, filename, revision=revision))
    except RevisionNotFoundError as err:
        raise WeightsError(f"Revision {revision} of the weights repo {repo_id} does not exist; check the "
                           f"@revision or weights/manifest.json.") from err
    except RepositoryNotFoundError as err:   # also private and gated repos without access
        raise WeightsError(f"The weights repo {repo_id} was not found on {constants.ENDPOINT} (or it is private): "
                           f"check --weights (or {WEIGHTS_REPO_ENV}), or log in with `hf auth login`.") from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        if constants.HF_HUB_OFFLINE:
            raise WeightsError(offline_hint) from err
        error = WeightsError if isinstance(err, OfflineModeIsEnabled) else HubUnavailableError
        raise error(f"Cannot reach {constants.ENDPOINT} to download {filename} and it is not in the cache "
                    f"{cache}: check the network connection (or HF_ENDPOINT), {local_hint}.") from err
    except EntryNotFoundError as err:
        raise WeightsError(f"{filename} is missing from the weights repo {where}: it does not hold a complete "
                           "FALCO weight set; publish one with `python -m falco.weights publish`.") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        raise (HubUnavailableError if answer_is_for_now(status) else WeightsError)(
            f"The Hub answered {status or 'an error'} for {filename} of {where}; try again later.") from err
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise WeightsError(f"The disk filled up while downloading {filename} into {cache}: free some space "
                               "or set HF_HOME to a larger disk.") from err
        for_now = isinstance(err, (ConnectionError, TimeoutError))
        raise (HubUnavailableError if for_now else WeightsError)(
            f"Downloading {filename} from {where} failed: {first_line(err)}") from err
    except Exception as err:   # transport errors of the HTTP client, which vary across versions
        for_now = isinstance(err, network_errors())
        raise (HubUnavailableError if for_now else WeightsError)(
            f"Downloading {filename} from {where} failed ({type(err).__name__}: {first_line(err)}); "
            "check the network connection and try again.") from err


def answer_is_for_now(status: int | None) -> bool:
    """Whether an HTTP answer (None: none) means the server fails for now, so a later try may work."""
    return status is None or status >= 500 or status in (408, 429)


def lacking_space(size: int, directory: Path) -> str | None:
    """Why ``size`` bytes do not fit on ``directory``'s disk (the folder may not exist yet), or None."""
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is not None and (free := shutil.disk_usage(existing).free) < size:
        return f"it needs {size / 1e6:.0f} MB and {existing} has {free / 1e6:.0f} MB free"
    return None


def _ensure_space(size: int, directory: Path, filename: str) -> None:
    if problem := lacking_space(size, directory):
        raise WeightsError(f"Not enough disk space for {filename}: {problem}; free some space or set HF_HOME to a "
                           "larger disk.")


def network_errors() -> tuple[type[BaseException], ...]:
    """Errors of the network failing for now, of whichever HTTP client huggingface_hub uses (requests, httpx or
    httpx2, depending on its version)."""
    from importlib import import_module
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx", ("TransportError",)), ("httpx2", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            found += [getattr(import_module(module), name) for name in names]
        except (ImportError, AttributeError):
            pass
    return tuple(found)
