"""Anonymize a folder tree of photos into a mirror tree (the command line's ``anonymize``).

For IN_DIR/a/b/x.jpg it writes OUT_DIR/a/b/x.jpg (every usable face anonymized; with
several margins x.m0.5.jpg, one per m), x.jpg.latents.safetensors (the W+ codes) and,
last, x.jpg.json, the record of the run with its settings.  An image recorded with the
same settings is done and skipped, so a run that was interrupted picks up where it
stopped; one recorded with other settings (m, steps, seed, fake k, weights, ...) is done
again and its earlier outputs replaced.  A failed image gets a record with the error
(retried with --retry-failed) and the run goes on.  ``--shard i/n`` takes
the files whose path hashes to i modulo n, so n machines given 0/n .. n-1/n split a
dataset without talking to each other and every file lands in exactly one shard.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from falco.config import BankConfig, CliConfig, OptimConfig
from falco.errors import FalcoError, WeightsError
from falco.files import save_image, write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard takes i/n (e.g. 0/4), got {text!r}") from None
        if not 0 <= index < count:
            raise ValueError(f"--shard {text}: i must be in 0..n-1")
        return cls(index, count)

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

    @property
    def handled(self) -> int:
        return self.done + self.skipped + self.failed


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


def output_paths(out_dir: Path, relative: str, margins: Sequence[float]) -> tuple[list[Path], Path, Path]:
    """(images, latents, record) for one input image."""
    target = out_dir / relative
    if len(margins) == 1:
        images = [target]
    else:
        images = [target.with_name(f"{target.stem}.m{m:g}{target.suffix}") for m in margins]
    return images, target.with_name(target.name + ".latents.safetensors"), target.with_name(target.name + ".json")


def run_settings(margins: Sequence[float], optim: OptimConfig, fake_k: int, weights: str) -> dict:
    """What decides an image's outputs, as its record keeps it (JSON types): the device does not."""
    return json.loads(json.dumps({"margins": list(margins), "optim": asdict(optim), "fake_k": fake_k,
                                  "weights": weights}))


def read_record(record: Path) -> dict | None:
    """An image's record; None when there is none or it is damaged (the image is done again)."""
    try:
        entry = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def prepare_out_dir(in_dir: Path, out_dir: Path) -> list[Path]:
    """Creates ``out_dir`` and proves it writable; a FalcoError saying why it cannot hold the outputs.

    Returns the folders it created, deepest first, for ``remove_empty`` should the run write nothing."""
    source, target = Path(in_dir).resolve(), Path(out_dir).resolve()
    if target == source:
        raise FalcoError(f"{out_dir} is the input folder: the outputs would sit beside the photos. "
                         "Give another output folder.")
    if source.is_relative_to(target):
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


def anonymize_one(pipeline, source: Path, relative: str, out_dir: Path, margins: Sequence[float],
                  optim: OptimConfig, fake_k: int, config: CliConfig, settings: dict | None = None) -> dict:
    """Anonymize one photo and write its images, latents and (last) record; returns the record.

    ``settings``: ``run_settings`` of this run, kept in the record; without them a tree run does the photo again."""
    started = time.monotonic()
    images, latents, record = output_paths(out_dir, relative, margins)
    result = None
    for event in pipeline.anonymize(source, margins=margins, optim=optim, fake_k=fake_k):
        result = event
    record.parent.mkdir(parents=True, exist_ok=True)
    for photo, path in zip(result.photos, images):
        save_image(photo, path, config.jpeg_quality)
    result.save_latents(latents)
    entry = {"source": relative, "status": "ok",
             "outputs": [p.relative_to(out_dir).as_posix() for p in (*images, latents)],
             "faces": result.face_records(), "settings": settings,
             "params": result.params, "seconds": round(time.monotonic() - started, 3)}
    write_atomic(record, lambda tmp: tmp.write_text(json.dumps(entry, indent=2)))
    return entry


def record_failure(out_dir: Path, relative: str, settings: dict, err: Exception) -> dict:
    _, _, record = output_paths(out_dir, relative, settings["margins"])
    record.parent.mkdir(parents=True, exist_ok=True)
    entry = {"source": relative, "status": "failed", "error": str(err) or type(err).__name__,
             "error_type": type(err).__name__, "settings": settings}
    write_atomic(record, lambda tmp: tmp.write_text(json.dumps(entry, indent=2)))
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
                   config: CliConfig = CliConfig()) -> Summary:
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    prepare_out_dir(in_dir, out_dir)
    settings = run_settings(margins, optim, fake_k, pipeline.source)
    files = [f for f in list_images(in_dir, config.image_extensions, exclude=out_dir.resolve()) if shard.holds(f)]
    summary = Summary(total=len(files))
    with tqdm(total=len(files), unit="photo", desc=f"shard {shard.index}/{shard.count}", disable=not progress) as bar:
        try:
            for relative in files:
                _anonymize_file(pipeline, in_dir, out_dir, relative, settings, optim, retry_failed, config, summary)
                # Counted by hand, after the image: iterating the bar would count it only at the next image,
                # one behind the postfix.  set_postfix redraws both.
                bar.update(1)
                bar.set_postfix(done=summary.done, skipped=summary.skipped, failed=summary.failed)
        except KeyboardInterrupt as stop:
            raise Interrupted(summary) from stop
    return summary


def _anonymize_file(pipeline, in_dir: Path, out_dir: Path, relative: str, settings: dict, optim: OptimConfig,
                    retry_failed: bool, config: CliConfig, summary: Summary) -> None:
    """Does one image of the tree, or skips it; counts it in ``summary``."""
    earlier = read_record(output_paths(out_dir, relative, settings["margins"])[2])
    if earlier is not None and earlier.get("settings") == settings:
        if earlier.get("status") == "ok" or (earlier.get("status") == "failed" and not retry_failed):
            summary.skipped += 1
            summary.failed_before += earlier.get("status") == "failed"
            return
    elif earlier is not None:
        if not summary.redone:
            log.warning("%s was done with other settings: it is done again, and so is every such image", relative)
        summary.redone += 1
    try:
        entry = anonymize_one(pipeline, in_dir / relative, relative, out_dir, settings["margins"], optim,
                              settings["fake_k"], config, settings)
        summary.done += 1
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
