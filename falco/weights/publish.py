"""Publishing: the official checkpoints converted to the Hub layout, checked, and uploaded at a pinned commit.

Hub downloads are never unpickled; the official ``.pt``/``.pth`` files (named here, or downloaded by
falco.weights.prepare) are read with ``torch.load(weights_only=True)`` only (falco.models.io).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from falco import __version__
from falco.bank import FakeBank, made_by
from falco.config import BankConfig
from falco.errors import WeightsError, first_line
from falco.models import io
from falco.weights.assemble import build_bank_from_folder, check_dlib_model, copy_dlib_model, write_manifest
from falco.weights.hub import is_repo_id
from falco.weights.manifest import ARTIFACTS, MANIFEST_NAME, NETWORKS, PROJECT_MANIFEST, Build, Manifest, verify_file
from falco.weights.prepare import PUBLISH_COMMAND

PUBLISHED_NOTE = "Hashes of this folder; the pinned revision is recorded in the FALCO project's weights/manifest.json."


def _check_bank(bank_path: Path, generator_path: Path, farl_path: Path) -> None:
    """The bank must come from these very networks."""
    bank = FakeBank.load(bank_path)
    generator, mean_w = io.load_generator(generator_path)
    farl = io.load_farl(farl_path)
    if bank.w.shape[1] != generator.style_dim or bank.embeddings.shape[1] != farl.config["embed_dim"]:
        raise WeightsError(f"{bank_path.name} has w [{bank.w.shape[1]}] / embeddings [{bank.embeddings.shape[1]}], "
                           "which do not fit the generator and FaRL being published.")
    if not made_by(bank, generator, mean_w, farl):
        raise WeightsError(f"{bank_path.name} was built with other networks than the ones being published; "
                           "rebuild it with `python -m falco.cli bank build --weights <the converted folder>`.")


def _check_repo_id(repo_id: str) -> None:
    if not is_repo_id(repo_id):
        raise WeightsError(f"{repo_id!r} is not a Hub repo id (user/name).")


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
        copy_dlib_model(Path(inputs[name]), folder / ARTIFACTS[name])
        check_dlib_model(name, folder / ARTIFACTS[name])
    if bank is None:
        build_bank_from_folder(folder, bank_size or BankConfig().size, device)
    else:
        _check_bank(Path(bank), folder / ARTIFACTS["generator"], folder / ARTIFACTS["farl"])
        shutil.copyfile(bank, folder / ARTIFACTS["fake_bank"])

    built = Build(PUBLISH_COMMAND, __version__, *((None, None) if bank else (device, bank_size or BankConfig().size)))
    return write_manifest(folder, repo_id, PUBLISHED_NOTE, built=built)


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
        raise WeightsError(f"Uploading to {repo_id} failed ({first_line(err)}); log in with a write token "
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


