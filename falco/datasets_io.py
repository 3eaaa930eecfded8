"""Hugging Face datasets in and out of the command line's ``anonymize --dataset``.

In: one split of a dataset from the Hub or from disk (a ``save_to_disk`` folder, or anything ``load_dataset``
reads, such as a folder of images or parquet files); its image column is read undecoded, so that the
pipeline decodes it like any upload.  Work: OUT_DIR/items/ holds, per row, what a folder run writes for a
photo (the images, the W+ codes and, last, the record), named by the row's index: the unit that a rerun
resumes and that each process of ``accelerate launch`` takes its share of.  Out: OUT_DIR/dataset/, written
by ``Dataset.save_to_disk`` once every row is done and renamed into place whole, with one row per input row
and m: every original column unchanged, then ADDED_COLUMNS.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falco.batch import Item, Shard, Summary, anonymize_items, output_paths, read_record, run_settings
from falco.checks import check_dataset_columns
from falco.config import CliConfig, OptimConfig
from falco.errors import FalcoError, InputImageError, first_line

log = logging.getLogger(__name__)

WORK_FOLDER = "items"        # OUT_DIR/items/: per-row outputs and records
DATASET_FOLDER = "dataset"   # OUT_DIR/dataset/: the assembled dataset (datasets.load_from_disk)
# The columns a run adds, in this order (falco.evaluate reads them): per row and m, the anonymized image (None
# for a failed row), m, and per anonymized face (in the records' order) the ArcFace cosine to the original, dlib's
# distance (None where dlib found no landmarks) and the fake's bank row; ``error`` says why a row failed.
ADDED_COLUMNS = ("anonymized", "margin", "identity_cosine", "recognizer_distance", "fake_index", "error")


def added_features():
    from datasets import Features, Image, Sequence, Value
    return Features({"anonymized": Image(), "margin": Value("float64"),
                     "identity_cosine": Sequence(Value("float64")), "recognizer_distance": Sequence(Value("float64")),
                     "fake_index": Sequence(Value("int64")), "error": Value("string")})


@dataclass(frozen=True)
class SourceDataset:
    rows: Any            # datasets.Dataset: one split, map-style (rows are taken by index)
    image_column: str


def open_dataset(name_or_path: str, split: str, image_column: str | None,
                 config: CliConfig = CliConfig()) -> SourceDataset:
    """One split of a dataset and its image column; FalcoError saying what is wrong with the name, the split or
    the columns."""
    import datasets
    path = Path(name_or_path)
    try:
        if path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise FalcoError(f"The dataset at {name_or_path} has no split {split!r}; it has "
                                     f"{', '.join(loaded)}. Name one with --split.")
                loaded = loaded[split]
        else:
            loaded = datasets.load_dataset(name_or_path, split=split)
    except FalcoError:
        raise
    except Exception as err:   # datasets' errors have many types: a missing repo, a split, the network, a format
        raise FalcoError(f"Cannot open the dataset {name_or_path!r} (split {split!r}): {first_line(err)}") from None
    if not isinstance(loaded, datasets.Dataset):
        raise FalcoError(f"{name_or_path!r} is not one split of a dataset: name the split with --split.")
    return SourceDataset(loaded, check_dataset_columns(loaded.features, image_column, config.dataset_image_column,
                                                       ADDED_COLUMNS))


def anonymize_dataset(pipeline, source: SourceDataset, out_dir: Path, margins: Sequence[float], optim: OptimConfig,
                      fake_k: int, shard: Shard = Shard(0, 1), retry_failed: bool = False, progress: bool = True,
                      aligned: bool = False, batch_size: int = 1, config: CliConfig = CliConfig()) -> Summary:
    """This process's rows, as falco.batch does a folder's photos (into OUT_DIR/items/)."""
    items = dataset_items(source.rows, source.image_column, shard, config.dataset_image_suffix)
    return anonymize_items(pipeline, items, Path(out_dir), margins, optim, fake_k, shard, retry_failed, progress,
                           config, aligned, batch_size)


def write_dataset(pipeline, source: SourceDataset, out_dir: Path, margins: Sequence[float], optim: OptimConfig,
                  fake_k: int, aligned: bool = False, push_to: str | None = None, progress: bool = True,
                  config: CliConfig = CliConfig()) -> dict:
    """Once every row is done: OUT_DIR/dataset, pushed to ``push_to`` when given; what the summary line adds."""
    if not progress:   # process-wide: the command line asked for no bars
        from datasets import disable_progress_bars
        disable_progress_bars()
    settings = run_settings(margins, optim, fake_k, pipeline.source, aligned)
    path = assemble(source.rows, Path(out_dir), margins, settings, config.dataset_image_suffix)
    if push_to is not None:
        push_to_hub(path, push_to)
    return {"dataset": str(path), **({"pushed_to": push_to} if push_to else {})}


def dataset_items(dataset, column: str, shard: Shard, suffix: str) -> list[Item]:
    """This process's rows as items: row i writes items/<i>.<suffix>, and its photo is read when its turn comes."""
    from datasets import Image
    undecoded = dataset.cast_column(column, Image(decode=False))   # features only: the table is not rewritten
    items = []
    for index in range(len(dataset)):
        name = row_name(index, suffix)
        if shard.holds(name):
            items.append(Item(f"{WORK_FOLDER}/{name}", lambda index=index: _row_image(undecoded, column, index)))
    return items


def row_name(index: int, suffix: str) -> str:
    return f"{index:08d}{suffix}"


def _row_image(undecoded, column: str, index: int):
    cell = undecoded[index][column]
    if cell is None or (cell.get("bytes") is None and not cell.get("path")):
        raise InputImageError(f"Row {index} has no image in column {column!r}.")
    return cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"])


def added_rows(dataset, out_dir: Path, margins: Sequence[float], settings: dict, suffix: str) -> Iterator[dict]:
    """ADDED_COLUMNS of every row and m, from the rows' records: FalcoError for a row without a record of
    these settings (a run that did not finish)."""
    for index in range(len(dataset)):
        relative = f"{WORK_FOLDER}/{row_name(index, suffix)}"
        record = read_record(output_paths(out_dir, relative, margins)[2])
        if record is None or record.get("settings") != settings:
            raise FalcoError(f"Row {index} has no record of this run ({relative}.json): run the same command again.")
        for j, m in enumerate(margins):
            if record["status"] != "ok":
                yield {"anonymized": None, "margin": m, "identity_cosine": [], "recognizer_distance": [],
                       "fake_index": [], "error": record.get("error", "failed")}
                continue
            image = out_dir / record["outputs"][j]
            faces = [face for face in record["faces"] if face["margin"] == m]
            yield {"anonymized": {"bytes": image.read_bytes(), "path": image.name}, "margin": m,
                   "identity_cosine": [face["identity_cosine"] for face in faces],
                   "recognizer_distance": [face["recognizer_distance"] for face in faces],
                   "fake_index": [face["fake_index"] for face in faces], "error": None}


def assemble(dataset, out_dir: Path, margins: Sequence[float], settings: dict, suffix: str) -> Path:
    """Writes OUT_DIR/dataset from the source dataset and the rows' records; returns its path.

    The original columns are the source's own rows (``select``: the same Arrow values, nothing decoded); the new
    ones are built from the records in a scratch folder of the work folder.  The dataset is written beside its
    place and renamed into it, so a reader (or an interrupted run) never meets half of one."""
    from datasets import Dataset, concatenate_datasets
    work = out_dir / WORK_FOLDER
    final, partial, old = (out_dir / DATASET_FOLDER, out_dir / f"{DATASET_FOLDER}.partial",
                           out_dir / f"{DATASET_FOLDER}.old")
    for stale in (partial, old):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix="assemble-", dir=work))
    try:
        # A fresh cache folder: datasets caches a generator's output by the generator's code, not by the records.
        # No list among gen_kwargs: datasets would split the generator's work along it.
        added = Dataset.from_generator(added_rows, features=added_features(), cache_dir=str(scratch),
                                       gen_kwargs={"dataset": dataset, "out_dir": out_dir, "margins": tuple(margins),
                                                   "settings": settings, "suffix": suffix})
        # Flattened here, in the scratch folder: datasets would write it beside the source's own files otherwise
        # (into the input dataset's folder, for one read from disk).
        originals = dataset.select([index for index in range(len(dataset)) for _ in margins], keep_in_memory=True)
        originals = originals.flatten_indices(cache_file_name=str(scratch / "originals.arrow"))
        concatenate_datasets([originals, added], axis=1).save_to_disk(str(partial))
        if final.exists():
            final.rename(old)
        partial.rename(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


def push_to_hub(path: Path, repo: str) -> None:
    """The written dataset to a Hub dataset repo (``hf auth login`` first); its images are embedded."""
    from datasets import load_from_disk
    try:
        load_from_disk(str(path)).push_to_hub(repo)
    except Exception as err:   # the Hub's and the network's errors, of many types
        raise FalcoError(f"Pushing the dataset to {repo} failed ({first_line(err)}); it is saved in {path.name}/ "
                         "of the output folder: push it again with the same command (every row is done and "
                         "skipped) or with datasets.load_from_disk(...).push_to_hub(...).") from None
