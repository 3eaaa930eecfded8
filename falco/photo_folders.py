"""Anonymize a folder tree of photos into a mirror tree (the command line's ``anonymize``).

For IN_DIR/a/b/x.jpg it writes OUT_DIR/a/b/x.jpg (every usable face anonymized; with
several margins x.m0.5.jpg, one per m), x.jpg.latents.safetensors (the W+ codes) and,
last, x.jpg.json, the record of the run with its settings.  An image recorded with the
same settings is done and skipped, so a run that was interrupted picks up where it
stopped; one recorded with other settings (m, steps, seed, fake k, weights, ...) is done
again and its earlier outputs replaced.  A failed image gets a record with the error
(retried with --retry-failed) and the run goes on.  With --aligned the photos are
FFHQ-aligned crops (FFHQ, CelebA-HQ): x.jpg is the anonymized crop at the photo's size.
--batch N optimises the faces of N photos together (a GPU's gain; the results are those
of one photo at a time).  Under ``accelerate launch`` (one process per GPU, on one machine
or several sharing the output folder) each process takes the files whose path hashes to
its rank modulo the process count, and the main process prints the merged summary.
A Hugging Face dataset (--dataset) runs the same way, row by row (falco.datasets_io).
--method blur, pixelate, mask or nearest-fake runs a baseline of falco.baselines instead:
one image per photo (no m), no W+ file; every record names its method ("method").
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from falco.config import BankConfig, CliConfig, OptimConfig
from falco.errors import FalcoError, WeightsError
from falco.names import output_paths
from falco.output_files import save_image, save_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """One process's share of the inputs: the process's rank (``index``) among ``count`` (accelerate's)."""
    index: int
    count: int

    def holds(self, relative: str) -> bool:
        # A hash of the path, not a position in a listing: machines that list the tree at
        # different times (or see a few more files) still agree on every file's shard.
        return zlib.crc32(relative.encode("utf-8")) % self.count == self.index


@dataclass
class Summary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    redone: int = 0    # of done and failed: images recorded before with other settings
    failed_before: int = 0   # of skipped: images whose failure record (same settings) stands, not retried
    not_aligned: int = 0     # --aligned: images done (now or before) that do not look FFHQ-aligned

    def __add__(self, other: Summary) -> Summary:
        """Two runs' counts as one (the processes of accelerate launch; a tree's photos and its clips)."""
        return Summary(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(Summary)})

    @property
    def handled(self) -> int:
        return self.done + self.skipped + self.failed


@dataclass(frozen=True)
class Item:
    """One input: where its outputs go (relative to the output folder; its name in messages) and how to read it."""
    relative: str
    load: Callable[[], object]   # -> a PhotoSource (a path, bytes, an image)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, from ``main``) during ``anonymize_tree``; ``summary`` counts what was handled."""

    def __init__(self, summary: Summary):
        super().__init__(f"interrupted after {summary.handled} of {summary.total} images")
        self.summary = summary


def list_images(root: Path, extensions: Sequence[str], exclude: Path | None = None) -> list[str]:
    """Relative POSIX paths of the images under root, sorted; nothing under ``exclude``."""
    found = []
    for path in root.rglob("*"):
        if path.suffix.lower() not in extensions or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append(path.relative_to(root).as_posix())
    return sorted(found)


def run_settings(margins: Sequence[float | None], optim: OptimConfig, fake_k: int, weights: str,
                 aligned: bool = False, method: dict | None = None) -> dict:
    """What decides an image's outputs, as its record keeps it (JSON types): the device and --batch do not.
    ``aligned`` only when set, and ``method`` (a baseline's ``method_settings``, falco.baselines) only for a method
    other than FALCO, so that the records of earlier runs keep matching."""
    settings = {"margins": list(margins), "optim": asdict(optim), "fake_k": fake_k, "weights": weights}
    settings.update({"aligned": True} if aligned else {}, **({"method": method} if method else {}))
    return json.loads(json.dumps(settings))


def method_settings(pipeline) -> dict | None:
    """The method a run's anonymizer names for its records: a baseline's (falco.baselines); None for FALCO."""
    return getattr(pipeline, "method_settings", None)


def method_name(settings: dict) -> str:
    """The method that made an image recorded with ``settings`` (each record says it as ``method``)."""
    return (settings.get("method") or {}).get("name", "falco")


def read_record(record: Path) -> dict | None:
    """An image's record; None when there is none or it is damaged (the image is done again)."""
    try:
        entry = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def prepare_out_dir(in_dir: Path | None, out_dir: Path) -> list[Path]:
    """Creates ``out_dir`` and proves it writable; a FalcoError saying why it cannot hold the outputs.
    ``in_dir``: the input folder, if any, which the outputs must not touch.

    Returns the folders it created, deepest first, for ``remove_empty`` should the run write nothing."""
    source, target = Path(in_dir or "/nonexistent/input").resolve(), Path(out_dir).resolve()
    if in_dir is not None and target == source:
        raise FalcoError(f"{out_dir} is the input folder: the outputs would sit beside the photos. "
                         "Give another output folder.")
    if in_dir is not None and source.is_relative_to(target):
        raise FalcoError(f"{in_dir} lies inside {out_dir}: outputs could overwrite photos. "
                         "Give an output folder outside the input folder.")
    if out_dir.exists() and not out_dir.is_dir():
        raise FalcoError(f"{out_dir} is a file, not a folder.")
    created = [folder for folder in (out_dir, *out_dir.absolute().parents) if not folder.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        remove_empty(created)
        raise FalcoError(f"Cannot create the output folder {out_dir}: {err.strerror or err}.") from None
    problem = _unwritable(out_dir)
    if problem:
        remove_empty(created)
        raise FalcoError(f"Cannot write to the output folder {out_dir}: {problem}.")
    return created


def remove_empty(created: Sequence[Path]) -> None:
    """Removes the folders ``prepare_out_dir`` created, deepest first, while they are empty: a run stopped
    before its first file leaves no trace, and a folder that holds anything (or existed before) stays."""
    for folder in created:
        try:
            folder.rmdir()   # refuses a folder that is not empty
        except OSError:
            return


def _unwritable(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder``, or None when one can."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as err:
        return err.strerror or str(err)


def anonymize_one(pipeline, source, relative: str, out_dir: Path, margins: Sequence[float],
                  optim: OptimConfig, fake_k: int, config: CliConfig, settings: dict | None = None,
                  aligned: bool = False) -> dict:
    """Anonymize one photo and write its images, latents and (last) record; returns the record.

    ``settings``: ``run_settings`` of this run, kept in the record; without them a tree run does the photo again."""
    started = time.monotonic()
    result = None
    for event in pipeline.anonymize(source, margins=margins, optim=optim, fake_k=fake_k,
                                    aligned=aligned):
        result = event
    return write_result(result, relative, out_dir, margins, config, settings, time.monotonic() - started)


def write_result(result, relative: str, out_dir: Path, margins: Sequence[float], config: CliConfig,
                 settings: dict | None, seconds: float) -> dict:
    """A photo's images, latents and (last) record, from its AnonymizationResult; returns the record."""
    images, latents, record = output_paths(out_dir, relative, margins)
    record.parent.mkdir(parents=True, exist_ok=True)
    for photo, path in zip(result.photos, images):
        save_image(photo, path, config.jpeg_quality)
    written = images
    if hasattr(result, "save_latents"):   # a baseline's result has no W+ codes (falco.baselines)
        written = [*images, result.save_latents(latents)]
    entry = {"source": relative, "status": "ok", "method": method_name(settings or {}),
             "outputs": [p.relative_to(out_dir).as_posix() for p in written],
             "faces": result.face_records(), "settings": settings,
             "params": result.params, "seconds": round(seconds, 3)}
    if result.alignment is not None:
        entry["alignment"] = asdict(result.alignment)
    save_json(record, entry)
    return entry


def record_failure(out_dir: Path, relative: str, settings: dict, err: Exception) -> dict:
    _, _, record = output_paths(out_dir, relative, settings["margins"])
    record.parent.mkdir(parents=True, exist_ok=True)
    entry = {"source": relative, "status": "failed", "method": method_name(settings),
             "error": str(err) or type(err).__name__,
             "error_type": type(err).__name__, "settings": settings}
    save_json(record, entry)
    return entry


def _remove_superseded(out_dir: Path, relative: str, earlier: dict, now: dict) -> None:
    """Deletes the files of an earlier record that the new one does not list (other m values: other names)."""
    record = output_paths(out_dir, relative, now["settings"]["margins"])[2]
    keep = {record, *(out_dir / name for name in now.get("outputs", []))}
    for name in earlier.get("outputs", []):
        path = out_dir / name
        # A damaged record cannot point outside the output folder.
        if path not in keep and path.resolve().is_relative_to(out_dir.resolve()):
            path.unlink(missing_ok=True)


def anonymize_tree(pipeline, in_dir: Path, out_dir: Path, margins: Sequence[float] = (0.0,),
                   optim: OptimConfig = OptimConfig(), fake_k: int = BankConfig().k_nearest,
                   shard: Shard = Shard(0, 1), retry_failed: bool = False, progress: bool = True,
                   config: CliConfig = CliConfig(), aligned: bool = False, batch_size: int = 1) -> Summary:
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    prepare_out_dir(in_dir, out_dir)
    files = [f for f in list_images(in_dir, config.image_extensions, exclude=out_dir.resolve()) if shard.holds(f)]
    items = [Item(relative, lambda relative=relative: in_dir / relative) for relative in files]
    return anonymize_items(pipeline, items, out_dir, margins, optim, fake_k, shard, retry_failed, progress, config,
                           aligned, batch_size)


def anonymize_items(pipeline, items: Iterable[Item], out_dir: Path, margins: Sequence[float], optim: OptimConfig,
                    fake_k: int, shard: Shard = Shard(0, 1), retry_failed: bool = False, progress: bool = True,
                    config: CliConfig = CliConfig(), aligned: bool = False, batch_size: int = 1) -> Summary:
    """Every item not done yet with these settings, ``batch_size`` photos per optimisation; counts in the Summary.
    ``items`` without a length (a streamed dataset's rows) are counted as they come."""
    settings = run_settings(margins, optim, fake_k, pipeline.source, aligned, method_settings(pipeline))
    streamed = not isinstance(items, Sized)
    summary = Summary(total=0 if streamed else len(items))
    if shard.count > 1 and not streamed:
        log.info("process %d of %d takes %d of the inputs", shard.index + 1, shard.count, summary.total)
    group: list[tuple[Item, dict | None]] = []
    with tqdm(total=None if streamed else summary.total, unit="photo",
              desc=f"process {shard.index + 1} of {shard.count}", disable=not progress) as bar:
        def counted(handled: int) -> None:
            # Counted by hand, after the images: iterating the bar would count an image only at the next one,
            # one behind the postfix.  set_postfix redraws both.
            bar.update(handled)
            bar.set_postfix(done=summary.done, skipped=summary.skipped, failed=summary.failed)

        try:
            for item in items:
                summary.total += streamed
                earlier = read_record(output_paths(out_dir, item.relative, settings["margins"])[2])
                if still_good(earlier, settings, retry_failed, summary, item.relative):
                    counted(1)
                    continue
                group.append((item, earlier))
                if len(group) == batch_size:
                    _anonymize_group(pipeline, group, out_dir, settings, optim, config, summary)
                    counted(len(group))
                    group = []
            if group:
                _anonymize_group(pipeline, group, out_dir, settings, optim, config, summary)
                counted(len(group))
        except KeyboardInterrupt as stop:
            raise Interrupted(summary) from stop
    if shard.count > 1 and streamed:
        log.info("process %d of %d took %d of the streamed inputs", shard.index + 1, shard.count, summary.total)
    return summary


def _as_recorded_now(settings: object) -> object:
    """Recorded settings as this version records them.  Records from before m was the run's alone also hold an
    ``optim.margin``, which no run of the command line used (each named its m values, kept in ``margins``): it is
    left out, so that such a record still stands."""
    if isinstance(settings, dict) and isinstance(settings.get("optim"), dict) and "margin" in settings["optim"]:
        return {**settings, "optim": {k: v for k, v in settings["optim"].items() if k != "margin"}}
    return settings


def still_good(earlier: dict | None, settings: dict, retry_failed: bool, summary: Summary, relative: str) -> bool:
    """Whether an input's record (with this run's settings) stands; counts it as skipped if so.  One recorded
    with other settings is counted as redone (and the first such said once); a failure retried is neither."""
    if earlier is not None and _as_recorded_now(earlier.get("settings")) != settings:
        if not summary.redone:
            log.warning("%s was done with other settings: it is done again, and so is every such input", relative)
        summary.redone += 1
        return False
    if earlier is None:
        return False
    if earlier.get("status") == "ok" or (earlier.get("status") == "failed" and not retry_failed):
        summary.skipped += 1
        summary.failed_before += earlier.get("status") == "failed"
        summary.not_aligned += _not_aligned(earlier)
        return True
    return False


def _not_aligned(entry: dict) -> bool:
    return entry.get("alignment", {}).get("looks_aligned") is False


def _anonymize_group(pipeline, group: list[tuple[Item, dict | None]], out_dir: Path, settings: dict,
                     optim: OptimConfig, config: CliConfig, summary: Summary) -> None:
    """Does the images of a group (one optimisation for several, or one at a time); counts them in ``summary``."""
    margins, fake_k, aligned = settings["margins"], settings["fake_k"], settings.get("aligned", False)
    if len(group) == 1:
        item, earlier = group[0]
        run_one(out_dir, item.relative, settings, earlier, summary, lambda: anonymize_one(
            pipeline, item.load(), item.relative, out_dir, margins, optim, fake_k, config, settings, aligned))
        return
    started = time.monotonic()
    loaded = []
    for item, _ in group:
        try:
            loaded.append(item.load())
        except Exception as err:   # recorded as that image's failure
            loaded.append(err)
    photos = [photo for photo in loaded if not isinstance(photo, Exception)]
    try:
        results = []
        for event in pipeline.anonymize_batch(photos, margins=margins, optim=optim, fake_k=fake_k, aligned=aligned):
            results = event
    except WeightsError:
        raise
    except Exception as err:   # the batch as a whole failed (e.g. out of memory): each image is recorded as such
        results = [err] * len(photos)
    results = iter(results)
    outcomes = [photo if isinstance(photo, Exception) else next(results) for photo in loaded]
    seconds = (time.monotonic() - started) / len(group)
    for (item, earlier), outcome in zip(group, outcomes):
        run_one(out_dir, item.relative, settings, earlier, summary, partial(
            _write_outcome, outcome, item.relative, out_dir, margins, config, settings, seconds))


def _write_outcome(outcome, relative: str, out_dir: Path, margins: Sequence[float], config: CliConfig,
                   settings: dict, seconds: float) -> dict:
    if isinstance(outcome, Exception):
        raise outcome
    return write_result(outcome, relative, out_dir, margins, config, settings, seconds)


def run_one(out_dir: Path, relative: str, settings: dict, earlier: dict | None, summary: Summary,
            run: Callable[[], dict]) -> None:
    """Runs (or writes) one input (a photo, a clip) and counts it; a failure is recorded and the run goes on.
    Then the files of the ``earlier`` record that the new one does not list are deleted."""
    try:
        entry = run()
        summary.done += 1
        summary.not_aligned += _not_aligned(entry)
    except WeightsError:
        raise   # every other image would fail the same way
    except Exception as err:   # one bad photo must not stop a dataset run
        log.warning("%s: %s", relative, err)
        summary.failed += 1
        try:
            entry = record_failure(out_dir, relative, settings, err)
        except OSError as unrecorded:
            problem = _unwritable(out_dir)
            if problem:   # every later image would fail the same way
                raise FalcoError(f"Cannot write to the output folder {out_dir} any more ({problem}); stopped "
                                 f"after {summary.handled} of {summary.total} images.") from None
            log.warning("%s: the failure could not be recorded either: %s", relative, unrecorded)
            return   # the earlier record stands, and its files with it
    if earlier is not None:
        _remove_superseded(out_dir, relative, earlier, entry)


# --- Several processes (accelerate launch) ----------------------------------------------------------------------
def process_state(device: str | None):
    """accelerate's view of this process: its rank and the process count (1 and 1 without ``accelerate launch``),
    its device.  The CPU is named for accelerate to join the processes over gloo when there is no GPU."""
    import torch
    from accelerate import PartialState
    on_cpu = torch.device(device).type == "cpu" if device else not torch.cuda.is_available()
    return PartialState(cpu=on_cpu)


def merge_summaries(state, summary: Summary) -> Summary:
    """Every process's Summary added up, in every process (after all of them finished theirs)."""
    from accelerate.utils import gather_object
    parts = gather_object([summary]) if state.num_processes > 1 else [summary]
    return sum(parts, Summary())


def warn_not_aligned(summary: Summary) -> None:
    if summary.not_aligned:
        log.warning("%d of %d images do not look FFHQ-aligned (their landmarks lie far from where FFHQ alignment puts "
                    "them): they were anonymized as given, and their records say so (\"alignment\"). Leave out "
                    "--aligned to detect and align their faces.", summary.not_aligned, summary.total)
