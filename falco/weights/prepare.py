"""A weight set prepared on this machine from the official checkpoints, when no published set exists.

Each official file is downloaded (falco.weights.official) and converted into the Hub layout, the
fake bank is built from the converted generator and FaRL, and the manifest is written last: it
records the source that served each official file and what built the set (the app's first start
or a command).  Everything happens in ``<out>.partial/``; only a complete set is renamed to
``<out>``, so a half-built set is never used, and an interrupted prepare goes on where it stopped
(converted files and their origins are kept, the bank resumes from its parts).  torch is imported
only to build a set: ``find_prepared`` runs at startup while the app imports the rest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from falco import __version__
from falco.config import PREPARED_WEIGHTS_ENV, BankConfig
from falco.errors import WeightsError
from falco.output_files import save_json
from falco.weights import official
from falco.weights.manifest import ARTIFACTS, MANIFEST_NAME, Build, Manifest, Origin, background_verifier, sha256_file

log = logging.getLogger(__name__)

# Item of the progress -> the official file it downloads (one each: an item's stages then only move forward);
# each file -> the artifacts converted from it.
ITEMS: dict[str, str] = {"e4e": "e4e", "ArcFace": "arcface", "FaRL": "farl",
                         "dlib's landmark model": "dlib_landmarks", "dlib's recognition model": "dlib_recognition"}
OUTPUTS: dict[str, tuple[str, ...]] = {
    "e4e": ("generator", "e4e"),   # e4e's file holds the generator it was trained to invert
    "arcface": ("arcface",), "farl": ("farl",),
    "dlib_landmarks": ("dlib_landmarks",), "dlib_recognition": ("dlib_recognition",),
}
# Full-size generator + FaRL on the 2-core development CPU, one fake per call, freed memory reused: about 4 s a fake
# (`falco.cli bank build --n 12`: 49 s, loading included), 10-12 s with other jobs on its cores (README "First
# start"); for the estimate the log gives.
CPU_SECONDS_PER_FAKE = 4.0
# What built a set (its manifest's `built`, the note and the model card say it).
FIRST_START = "the app's first start"
PREPARE_COMMAND = "`python -m falco.weights prepare`"
PUBLISH_COMMAND = "`python -m falco.weights publish`"
SOURCES_RECORD = "official-sources.json"   # in <out>.partial/: each converted file's origin, kept across a resume
STAGES = ("downloading", "converting", "building", "checking")


@dataclass(frozen=True)
class PrepareProgress:
    stage: str               # one of STAGES
    item: str                # an item of ITEMS, "the fake bank", "the weights"
    index: int               # 1-based item number in the stage
    total: int
    fraction: float | None   # 0..1 within the item, where known

    @property
    def order(self) -> tuple[bool, int, int]:
        """Where this stage falls in a prepare: each item downloaded then converted, in turn; the bank; the check."""
        per_item = self.stage in STAGES[:2]
        return not per_item, self.index if per_item else 0, STAGES.index(self.stage)

    def describe(self) -> str:
        text = f"Preparing the models on first start: {self.stage} {self.item}"
        if self.total > 1:
            text += f" ({self.index} of {self.total})"
        return text if self.fraction is None else f"{text}, {self.fraction:.0%}"


Progress = Callable[[PrepareProgress], None]


def forward_only(progress: Progress) -> Progress:
    """``progress``, told only of steps in the stage of the last one told or a later one: a download's last
    report after its conversion started, or the next source downloading after a conversion failed, is not a
    step back.  Within a stage the fraction may start over (the next source of a download that failed)."""
    last: list[tuple] = []

    def report(event: PrepareProgress) -> None:
        if not last or event.order >= last[0]:
            last[:] = [event.order]
            progress(event)
    return report


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
                    progress: Progress | None = None, configs: Mapping[str, dict] | None = None,
                    built_by: str = PREPARE_COMMAND) -> Path:
    """The complete set at ``out`` (default prepared_folder()), built there from the official files unless
    present.  ``bank_size`` defaults to bank_size_for(device); ``progress`` is told of each step, never one
    before the last; ``configs``: architecture overrides of the official checkpoints (tests convert tiny ones);
    ``built_by``: what is building it (FIRST_START, PREPARE_COMMAND, PUBLISH_COMMAND), for its manifest."""
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
    report = forward_only(progress or (lambda event: None))
    for index, (item, name) in enumerate(ITEMS.items(), 1):
        if not all((partial / ARTIFACTS[a]).is_file() for a in OUTPUTS[name]):   # converted before
            _fetch_and_convert(name, (item, index), partial, downloads, configs or {}, report)
    shutil.rmtree(downloads)   # the converted files are what the set holds
    bank_size = bank_size or bank_size_for(device)
    _build_bank(partial, bank_size, device, report)
    report(PrepareProgress("checking", "the weights", 1, 1, None))
    from falco.weights.assemble import write_manifest
    built = Build(built_by, __version__, str(device), bank_size)
    write_manifest(partial, None, f"Prepared on this machine from the official checkpoints by {built_by}.",
                   _recorded_sources(partial), built)
    (partial / SOURCES_RECORD).unlink(missing_ok=True)   # now in the manifest
    if out.exists():   # a damaged earlier set (find_prepared refused it)
        shutil.rmtree(out)
    partial.rename(out)
    log.info("the weights are prepared in %s by %s", out, built.describe())
    return out


def _fetch_and_convert(name: str, step: tuple[str, int], partial: Path, downloads: Path,
                       configs: Mapping[str, dict], report: Progress) -> None:
    """Download the official file ``name``, convert it into ``partial`` and record its origin; ``step``: (item,
    its index)."""
    from falco.models import io
    from falco.weights.assemble import check_dlib_model, copy_dlib_model
    item, index = step

    def downloading(fraction: float | None) -> None:
        report(PrepareProgress("downloading", item, index, len(ITEMS), fraction))

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
        except BaseException as err:
            for output in outputs:   # no output of a file that failed its check
                output.unlink(missing_ok=True)
            if isinstance(err, WeightsError):
                log.warning("%s from %s was refused (%s); trying its next source", name, source, err)
            raise

    downloading(None)
    path, source = official.fetch_official(name, downloads, check=convert, progress=downloading)
    origin = Origin(source.kind, source.location, official.served_revision(downloads, name, source), source.layout,
                    path.stat().st_size, source.sha256 or sha256_file(path), OUTPUTS[name])
    log.info("%s came from %s", name, origin.describe())
    _record_source(partial, name, origin)
    if source.kind != "package":   # a package's file (dlib's models from PyPI) is used where it is installed
        path.unlink(missing_ok=True)   # converted: the download is not needed again


def _recorded_sources(partial: Path) -> dict[str, Origin]:
    """The origins recorded in ``partial`` so far (none in a partial set left by a version that kept none)."""
    record = partial / SOURCES_RECORD
    if not record.is_file():
        return {}
    return {name: Origin.from_dict(o) for name, o in json.loads(record.read_text()).items()}


def _record_source(partial: Path, name: str, origin: Origin) -> None:
    save_json(partial / SOURCES_RECORD, {**{n: asdict(o) for n, o in _recorded_sources(partial).items()},
                                         name: asdict(origin)})


def _build_bank(partial: Path, n: int, device, report: Progress) -> None:
    from falco.weights.assemble import build_bank_from_folder
    where = "the CPU" if device.type == "cpu" else str(device)
    estimate = f" (about {n * CPU_SECONDS_PER_FAKE / 60:.0f} min)" if device.type == "cpu" else ""
    log.info("building a fake bank of %d fakes on %s%s", n, where, estimate)
    # On a CPU a part file every few fakes: an interruption loses a minute of work, and progress moves as often.
    config = replace(BankConfig(), chunk_rows=BankConfig().cpu_chunk_rows) if device.type == "cpu" else BankConfig()
    start = time.monotonic()
    build_bank_from_folder(partial, n, str(device), config,
                           rows_done=lambda done: report(PrepareProgress("building", "the fake bank", 1, 1, done / n)))
    log.info("built the fake bank of %d fakes in %.1f min", n, (time.monotonic() - start) / 60)
