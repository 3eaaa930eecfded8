"""Anonymize a folder tree of photos into a mirror tree.

    python -m falco.cli anonymize IN_DIR OUT_DIR [--margin 0 0.5] [--shard 0/4] [--weights SRC]

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

import argparse
import json
import logging
import signal
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PIL import Image
from safetensors.torch import save
from tqdm.auto import tqdm

from falco.checks import check_run_settings
from falco.config import BankConfig, CliConfig, OptimConfig
from falco.errors import FalcoError, WeightsError

log = logging.getLogger("falco.cli")


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


def prepare_out_dir(in_dir: Path, out_dir: Path) -> None:
    """Creates ``out_dir`` and proves it writable; a FalcoError saying why it cannot hold the outputs."""
    source, target = Path(in_dir).resolve(), Path(out_dir).resolve()
    if target == source:
        raise FalcoError(f"{out_dir} is the input folder: the outputs would sit beside the photos. "
                         "Give another output folder.")
    if source.is_relative_to(target):
        raise FalcoError(f"{in_dir} lies inside {out_dir}: outputs could overwrite photos. "
                         "Give an output folder outside the input folder.")
    if out_dir.exists() and not out_dir.is_dir():
        raise FalcoError(f"{out_dir} is a file, not a folder.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FalcoError(f"Cannot create the output folder {out_dir}: {err.strerror or err}.") from None
    problem = _unwritable(out_dir)
    if problem:
        raise FalcoError(f"Cannot write to the output folder {out_dir}: {problem}.")


def _unwritable(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder``, or None when one can."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as err:
        return err.strerror or str(err)


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:   # Ctrl-C included: no half-written file stays behind
        tmp.unlink(missing_ok=True)
        raise


def _save_image(image: Image.Image, path: Path, config: CliConfig) -> None:
    # Fresh images carry no metadata: EXIF (GPS, names, thumbnails) can identify people too.
    fmt = Image.registered_extensions()[path.suffix.lower()]
    options = {"quality": config.jpeg_quality} if fmt == "JPEG" else {}
    _write_atomic(path, lambda tmp: image.save(tmp, format=fmt, **options))


def anonymize_one(pipeline, source: Path, relative: str, out_dir: Path, margins: Sequence[float],
                  optim: OptimConfig, fake_k: int, config: CliConfig, settings: dict | None = None) -> dict:
    """Anonymize one photo and write its images, latents and (last) record; returns the record.

    ``settings``: ``run_settings`` of this run, kept in the record; without them a tree run does the photo again."""
    # Loaded with the pipeline by now; main imports falco.pipeline late, so that usage errors answer fast.
    from falco.pipeline import WPLUS_FILE_METADATA
    started = time.monotonic()
    images, latents, record = output_paths(out_dir, relative, margins)
    result = None
    for event in pipeline.anonymize(source, margins=margins, optim=optim, fake_k=fake_k):
        result = event
    record.parent.mkdir(parents=True, exist_ok=True)
    for photo, path in zip(result.photos, images):
        _save_image(photo, path, config)
    # As bytes: safetensors' own save_file creates files readable by their owner alone, not per the umask.
    codes = save(result.latent_tensors(), metadata={"what": WPLUS_FILE_METADATA})
    _write_atomic(latents, lambda tmp: tmp.write_bytes(codes))
    entry = {"source": relative, "status": "ok",
             "outputs": [p.relative_to(out_dir).as_posix() for p in (*images, latents)],
             "faces": result.face_records(), "settings": settings,
             "params": result.params, "seconds": round(time.monotonic() - started, 3)}
    _write_atomic(record, lambda tmp: tmp.write_text(json.dumps(entry, indent=2)))
    return entry


def record_failure(out_dir: Path, relative: str, settings: dict, err: Exception) -> dict:
    _, _, record = output_paths(out_dir, relative, settings["margins"])
    record.parent.mkdir(parents=True, exist_ok=True)
    entry = {"source": relative, "status": "failed", "error": str(err) or type(err).__name__,
             "error_type": type(err).__name__, "settings": settings}
    _write_atomic(record, lambda tmp: tmp.write_text(json.dumps(entry, indent=2)))
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
    with tqdm(files, unit="photo", desc=f"shard {shard.index}/{shard.count}", disable=not progress) as bar:
        try:
            for relative in bar:
                _anonymize_file(pipeline, in_dir, out_dir, relative, settings, optim, retry_failed, config, summary)
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


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    defaults = OptimConfig()
    parser = argparse.ArgumentParser(prog="python -m falco.cli", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("anonymize", help="anonymize a folder tree into a mirror tree",
                         description=__doc__.split("\n\n", 1)[1],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("in_dir", type=Path)
    run.add_argument("out_dir", type=Path)
    run.add_argument("--margin", type=float, nargs="+", default=[defaults.margin],
                     help="m values (several run as one batch per photo)")
    run.add_argument("--shard", type=str, default="0/1", help="i/n: this run's share of the files, 0 <= i < n")
    run.add_argument("--weights", default=None, help="Hub repo id[@revision] or local weights folder")
    run.add_argument("--device", default=None, help="e.g. cuda:1 (default: CUDA when available)")
    run.add_argument("--steps", type=int, default=defaults.steps)
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--fake-k", type=int, default=BankConfig().k_nearest,
                     help="draw the fake among the k nearest (with --seed)")
    run.add_argument("--loss-on-skip256", action="store_true", help="losses on the generator's 256 output")
    run.add_argument("--retry-failed", action="store_true", help="run again the images whose record is a failure")
    run.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        shard = Shard.parse(args.shard)
    except ValueError as err:
        run.error(str(err))
    if not args.in_dir.is_dir():
        run.error(f"{args.in_dir} is not a folder")
    optim = replace(defaults, steps=args.steps, seed=args.seed, loss_on_skip256=args.loss_on_skip256)
    try:   # before the networks load, so a typo costs no load (the pipeline checks again, with the bank's size)
        margins = check_run_settings(args.margin, optim, args.fake_k)
        prepare_out_dir(args.in_dir, args.out_dir)
    except FalcoError as err:
        run.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # SIGTERM (a scheduler's stop) ends the run as Ctrl-C does: between two files, nothing half-written.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        from falco.pipeline import FalcoPipeline
        pipeline = FalcoPipeline.from_pretrained(args.weights, device=args.device, progress=not args.no_progress)
        check_run_settings(margins, optim, args.fake_k, len(pipeline.bank))
        summary = anonymize_tree(pipeline, args.in_dir, args.out_dir, margins, optim, args.fake_k,
                                 shard, args.retry_failed, progress=not args.no_progress)
    except FalcoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        when = str(stop) if isinstance(stop, Interrupted) else "interrupted before the first image"
        print(f"{when}; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps({"out_dir": str(args.out_dir), **asdict(summary)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
