"""The folder a Space is made of: exactly the files `python app.py` needs, and the README's front matter for it.

The Space holds the app, the falco package as ``pip install .`` ships it (its modules and assets: no caches, no
scripts or scratch files the benchmarks leave), the runtime requirements, the pinned weights manifest and the
README, whose front matter tells the Hub how to run it.  Tests, CI and the development requirements stay out.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from falco.errors import FalcoError
from falco.weights.hub import is_repo_id
from falco.weights.manifest import ARTIFACTS, MANIFEST_NAME

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "falco"
# Beside the package: the app, what pip installs for it, the weights it pins and the page's README.
TOP_LEVEL_FILES = ("app.py", "requirements.txt", "README.md", f"weights/{MANIFEST_NAME}")
# Data files of the package, as pyproject.toml's package-data names them.
PACKAGE_DATA = ("assets",)


class SpaceError(FalcoError):
    """The Space cannot be deployed or does not work: the message says which step failed and why."""


def check_repo_id(repo_id: str, what: str) -> None:
    """SpaceError unless ``repo_id`` is a Hub id with its owner (user/name); ``what`` names it in the message."""
    if not is_repo_id(repo_id):
        raise SpaceError(f"{repo_id!r} is not a {what} id (user/name).")
    if "/" not in repo_id:
        raise SpaceError(f"{repo_id!r} is not a {what} id: name its owner too (user/name).")


def hub_errors() -> tuple[type[BaseException], ...]:
    """What a call to the Hub raises when the Hub refuses it or cannot be reached."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError
    errors: tuple[type[BaseException], ...] = (HfHubHTTPError, httpx.HTTPError, OSError)
    try:
        import httpx2  # the HTTP client of huggingface_hub 2 (its network errors are its own, not httpx's)
    except ImportError:
        return errors
    return (*errors, httpx2.HTTPError)


@dataclass(frozen=True)
class SpaceSettings:
    """What the README's front matter and the Space's variables say beyond the project's own front matter."""

    hardware: str | None = None        # suggested_hardware: what a duplicate of the Space asks for
    weights_repo: str | None = None    # a published set: preloaded into the image, named as the Space's model


def space_files(root: Path = PROJECT_ROOT) -> list[str]:
    """The Space's files, relative to ``root`` (posix paths, sorted)."""
    missing = [name for name in TOP_LEVEL_FILES if not (root / name).is_file()]
    if missing:
        raise SpaceError(f"{root} is not a FALCO checkout: {', '.join(missing)} missing.")
    files = list(TOP_LEVEL_FILES)
    for path in sorted((root / PACKAGE).rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith((".", "__pycache__")) for part in relative.parts):
            continue
        in_package = path.suffix == ".py" and (path.parent / "__init__.py").is_file()
        is_data = relative.parts[1] in PACKAGE_DATA
        if in_package or is_data:
            files.append(relative.as_posix())
    return sorted(files)


def preload_entry(weights_repo: str) -> str:
    """A ``preload_from_hub`` line: the set's files go into the Space's image at build time, so that a start (and
    every restart) finds them in the Hugging Face cache.  A revision needs the file list before it."""
    repo_id, _, revision = weights_repo.partition("@")
    if not revision:
        return repo_id
    return f"{repo_id} {','.join([MANIFEST_NAME, *ARTIFACTS.values()])} {revision}"


def space_readme(text: str, settings: SpaceSettings) -> str:
    """The project README with the Space's front matter completed for ``settings``."""
    from huggingface_hub import SpaceCard

    card = SpaceCard(text)
    if card.data.get("sdk") != "gradio" or not card.data.get("app_file"):
        raise SpaceError("README.md's front matter must name the Gradio SDK and app_file, as the project's does.")
    if settings.hardware:
        card.data.suggested_hardware = settings.hardware
    if settings.weights_repo:
        repo_id = settings.weights_repo.partition("@")[0]
        card.data.models = [repo_id]
        card.data.preload_from_hub = [preload_entry(settings.weights_repo)]
    return str(card)


def write_space_folder(out: Path, settings: SpaceSettings = SpaceSettings(), root: Path = PROJECT_ROOT) -> list[str]:
    """Writes the Space's files into ``out`` (which must be empty or absent); returns their relative paths."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpaceError(f"{out} exists and is not an empty folder; name a new one.")
    files = space_files(root)
    readme = space_readme((root / "README.md").read_text(encoding="utf-8"), settings)
    for name in files:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name == "README.md":
            target.write_text(readme, encoding="utf-8")
        else:
            shutil.copyfile(root / name, target)
    return files
