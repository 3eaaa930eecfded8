"""A weight set prepared on this machine from the official checkpoints, when no published set exists.

Each official file is downloaded (falco.weights.official) and converted into the Hub layout, the
fake bank is built from the converted generator and FaRL, and the manifest is written last.
Everything happens in ``<out>.partial/``; only a complete set is renamed to ``<out>``, so a
half-built set is never used, and an interrupted prepare goes on where it stopped (converted
files are kept, the bank resumes from its parts).  torch is imported only to build a set:
``find_prepared`` runs at startup while the app imports the rest.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from falco.config import PREPARED_WEIGHTS_ENV, BankConfig
from falco.errors import WeightsError
from falco.weights import official
from falco.weights.manifest import ARTIFACTS, MANIFEST_NAME, Manifest, background_verifier

log = logging.getLogger(__name__)

# Item of the progress -> the official files it downloads; each file -> the artifacts converted from it.
ITEMS: dict[str, tuple[str, ...]] = {"e4e": ("e4e",), "ArcFace": ("arcface",), "FaRL": ("farl",),
                                     "dlib models": ("dlib_landmarks", "dlib_recognition")}
OUTPUTS: dict[str, tuple[str, ...]] = {
    "e4e": ("generator", "e4e"),   # e4e's file holds the generator it was trained to invert
    "arcface": ("arcface",), "farl": ("farl",),
    "dlib_landmarks": ("dlib_landmarks",), "dlib_recognition": ("dlib_recognition",),
}
# Full-size generator + FaRL on the 2-core development CPU: 8-12 s a fake (README "First start"); for the estimate.
CPU_SECONDS_PER_FAKE = 10.0
PREPARED_NOTE = "Prepared on this machine from the official checkpoints by `python -m falco.weights prepare`."


@dataclass(frozen=True)
class PrepareProgress:
    stage: str               # "downloading", "converting", "building the fake bank", "checking"
    item: str                # "e4e", "ArcFace", "FaRL", "dlib models", "fake bank", "the weights"
    index: int               # 1-based item number in the stage
    total: int
    fraction: float | None   # 0..1 within the item, where known

    def describe(self) -> str:
        text = f"Preparing the models on first start: {self.stage} {self.item}"
        if self.total > 1:
            text += f" ({self.index} of {self.total})"
        return text if self.fraction is None else f"{text}, {self.fraction:.0%}"


Progress = Callable[[PrepareProgress], None]


def prepared_folder() -> Path:
    """Where the prepared set lives: ``$FALCO_PREPARED_WEIGHTS``, else ``$HF_HOME/falco/prepared-weights``."""
    if os.environ.get(PREPARED_WEIGHTS_ENV):
        return Path(os.environ[PREPARED_WEIGHTS_ENV]).expanduser()
    from huggingface_hub import constants
    return Path(constants.HF_HOME) / "falco" / "prepared-weights"


def find_prepared(folder: Path | None = None) -> Path | None:
    """The complete set in ``folder`` (default prepared_folder()): its manifest lists every artifact and every
    file has the manifest's size and sha256; else None.  No network."""
    folder = Path(folder) if folder is not None else prepared_folder()
    if not (folder / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = Manifest.load(folder / MANIFEST_NAME)
        with background_verifier() as check:
            for name in ARTIFACTS:
                artifact = manifest.artifact(name, str(folder))
                path = folder / artifact.filename
                if not artifact.pinned or not path.is_file() or path.stat().st_size != artifact.size:
                    return None
                check(path, artifact, str(folder), False)
    except (WeightsError, OSError):
        return None
    return folder


def bank_size_for(device: object) -> int:
    """The paper's bank on a GPU; on a CPU, where a fake takes seconds, its first BankConfig.cpu_size rows."""
    return BankConfig().cpu_size if str(device).split(":")[0] == "cpu" else BankConfig().size


def prepare_weights(out: Path | None = None, bank_size: int | None = None, device=None,
                    progress: Progress | None = None, configs: Mapping[str, dict] | None = None) -> Path:
    """The complete set at ``out`` (default prepared_folder()), built there from the official files unless
    present.  ``bank_size`` defaults to bank_size_for(device); ``configs``: architecture overrides of the
    official checkpoints (tests convert tiny ones)."""
    out = Path(out) if out is not None else prepared_folder()
    if find_prepared(out):
        return out
    if out.exists() and not (out / MANIFEST_NAME).exists() and any(out.iterdir()):
        raise WeightsError(f"{out} exists and is not a FALCO weight set; choose another folder.")
    from falco.device import resolve_device
    device = resolve_device(device)
    partial = out.with_name(out.name + ".partial")
    downloads = partial / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda event: None)
    for index, (item, names) in enumerate(ITEMS.items(), 1):
        for part, name in enumerate(names):
            if not all((partial / ARTIFACTS[a]).is_file() for a in OUTPUTS[name]):   # converted before
                _fetch_and_convert(name, (item, index, part, len(names)), partial, downloads, configs or {}, report)
    shutil.rmtree(downloads)   # the converted files are what the set holds
    _build_bank(partial, bank_size or bank_size_for(device), device, report)
    report(PrepareProgress("checking", "the weights", 1, 1, None))
    from falco.weights.assemble import write_manifest
    write_manifest(partial, None, PREPARED_NOTE)
    if out.exists():   # a damaged earlier set (find_prepared refused it)
        shutil.rmtree(out)
    partial.rename(out)
    log.info("the weights are prepared in %s", out)
    return out


def _fetch_and_convert(name: str, step: tuple[str, int, int, int], partial: Path, downloads: Path,
                       configs: Mapping[str, dict], report: Progress) -> None:
    """Download the official file ``name`` and convert it into ``partial``; ``step``: (item, its index, the
    file's place among the item's files, their number)."""
    from falco.models import io
    from falco.weights.assemble import check_dlib_model, copy_dlib_model
    item, index, part, parts = step

    def downloading(fraction: float | None) -> None:
        whole = None if fraction is None else (part + fraction) / parts
        report(PrepareProgress("downloading", item, index, len(ITEMS), whole))

    def convert(path: Path, source) -> None:
        # A WeightsError here makes fetch_official delete the file and try the next source.
        report(PrepareProgress("converting", item, index, len(ITEMS), None))
        outputs = [partial / ARTIFACTS[a] for a in OUTPUTS[name]]
        try:
            if name.startswith("dlib_"):
                copy_dlib_model(path, outputs[0])
                check_dlib_model(name, outputs[0])
            else:
                for network, output in zip(OUTPUTS[name], outputs, strict=True):
                    io.convert(network, path, output, configs.get(network), layout=source.layout)
        except BaseException:
            for output in outputs:   # no output of a file that failed its check
                output.unlink(missing_ok=True)
            raise

    downloading(None)
    path, source = official.fetch_official(name, downloads, check=convert, progress=downloading)
    if source.kind != "package":   # a package's file (dlib's models from PyPI) is used where it is installed
        path.unlink(missing_ok=True)   # converted: the download is not needed again


def _build_bank(partial: Path, n: int, device, report: Progress) -> None:
    from falco.weights.assemble import build_bank_from_folder
    where = "the CPU" if device.type == "cpu" else str(device)
    estimate = f" (about {n * CPU_SECONDS_PER_FAKE / 60:.0f} min)" if device.type == "cpu" else ""
    log.info("building a fake bank of %d fakes on %s%s", n, where, estimate)
    # On a CPU a part file per render batch: an interruption loses one batch, and progress moves every batch.
    config = replace(BankConfig(), chunk_rows=BankConfig().render_batch) if device.type == "cpu" else BankConfig()
    start = time.monotonic()
    build_bank_from_folder(partial, n, str(device), config,
                           rows_done=lambda done: report(PrepareProgress("building the fake bank", "fake bank",
                                                                         1, 1, done / n)))
    log.info("built the fake bank of %d fakes in %.1f min", n, (time.monotonic() - start) / 60)
