"""Hugging Face datasets in and out of the command line's ``anonymize --dataset``.

In: one split of a dataset from the Hub or from disk (a ``save_to_disk`` folder, or anything ``load_dataset``
reads, such as a folder of images or parquet files); its image column is read undecoded, so that the
pipeline decodes it like any upload.  Read by index (map-style: a Hub dataset is downloaded to the cache
first) or, with ``--streaming``, as it streams (datasets' IterableDataset): row i is then the stream's i-th
row, the same row i as map-style, so both runs name, resume and assemble the rows alike.

Work: OUT_DIR/items/ holds, per row, what a folder run writes for a photo (the images, the W+ codes and,
last, the record), named by the row's index: the unit that a rerun resumes and that each process of
``accelerate launch`` takes its share of.  Out: OUT_DIR/dataset/, written by ``Dataset.save_to_disk`` once
every row is done and renamed into place whole, with one row per input row and m: every original column
unchanged, then ADDED_COLUMNS.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falco.checks import check_dataset_columns
from falco.config import CliConfig, OptimConfig
from falco.errors import FalcoError, InputImageError, first_line
from falco.names import output_paths
from falco.photo_folders import Item, Shard, Summary, anonymize_items, method_settings, read_record, run_settings

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
    rows: Any            # one split: datasets.Dataset (map-style: taken by index) or, streaming, IterableDataset
    image_column: str
    streaming: bool = False


def open_dataset(name_or_path: str, split: str, image_column: str | None,
                 config: CliConfig = CliConfig(), streaming: bool = False) -> SourceDataset:
    """One split of a dataset and its image column; FalcoError saying what is wrong with the name, the split or
    the columns.  ``streaming``: an IterableDataset, which reads nothing but the file listing until iterated."""
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
            if streaming and isinstance(loaded, datasets.Dataset):   # on disk already: streamed for the same code
                loaded = loaded.to_iterable_dataset()
        else:
            loaded = datasets.load_dataset(name_or_path, split=split, streaming=streaming)
    except FalcoError:
        raise
    except Exception as err:   # datasets' errors have many types: a missing repo, a split, the network, a format
        raise FalcoError(f"Cannot open the dataset {name_or_path!r} (split {split!r}): {first_line(err)}") from None
    if not isinstance(loaded, datasets.IterableDataset if streaming else datasets.Dataset):
        raise FalcoError(f"{name_or_path!r} is not one split of a dataset: name the split with --split.")
    if loaded.features is None:   # a stream of untyped files (JSON, CSV): types only its rows would tell
        raise FalcoError(f"The dataset {name_or_path!r} does not declare its columns' types when streamed: "
                         "run it without --streaming.")
    return SourceDataset(loaded, check_dataset_columns(loaded.features, image_column, config.dataset_image_column,
                                                       ADDED_COLUMNS), streaming)


def anonymize_dataset(pipeline, source: SourceDataset, out_dir: Path, margins: Sequence[float], optim: OptimConfig,
                      fake_k: int, shard: Shard = Shard(0, 1), retry_failed: bool = False, progress: bool = True,
                      aligned: bool = False, batch_size: int = 1, config: CliConfig = CliConfig()) -> Summary:
    """This process's rows, as falco.photo_folders does a folder's photos (into OUT_DIR/items/)."""
    rows = streamed_items if source.streaming else dataset_items
    items = rows(source.rows, source.image_column, shard, config.dataset_image_suffix)
    return anonymize_items(pipeline, items, Path(out_dir), margins, optim, fake_k, shard, retry_failed, progress,
                           config, aligned, batch_size)


def write_dataset(pipeline, source: SourceDataset, out_dir: Path, margins: Sequence[float], optim: OptimConfig,
                  fake_k: int, aligned: bool = False, push_to: str | None = None, progress: bool = True,
                  config: CliConfig = CliConfig()) -> dict:
    """Once every row is done: OUT_DIR/dataset, pushed to ``push_to`` when given; what the summary line adds."""
    if not progress:   # process-wide: the command line asked for no bars
        from datasets import disable_progress_bars
        disable_progress_bars()
    settings = run_settings(margins, optim, fake_k, pipeline.source, aligned, method_settings(pipeline))
    write = assemble_streamed if source.streaming else assemble
    path = write(source.rows, Path(out_dir), margins, settings, config.dataset_image_suffix)
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
            items.append(Item(f"{WORK_FOLDER}/{name}",
                              lambda index=index: _cell_image(undecoded[index][column], column, index)))
    return items


def streamed_items(stream, column: str, shard: Shard, suffix: str) -> Iterator[Item]:
    """This process's rows of a stream as items, named as ``dataset_items`` names them, read as the stream reaches
    them.

    Every process reads the whole stream and keeps the rows whose name hashes to its rank (``Shard.holds``, as
    map-style), rather than datasets' ``split_dataset_by_node``: that also gives each row to exactly one process,
    but as whole files per process or every n-th row, and a row there does not know its index in the split.  The
    index names the row's outputs; kept, a run resumes under another process count or without --streaming.  The
    cost: each process reads (never decodes) the rows of the others."""
    rows = enumerate(stream.decode(False))
    while True:
        try:
            index, row = next(rows)
        except StopIteration:
            return
        except Exception as err:   # the network, a damaged file: what is done so far is recorded
            raise FalcoError(f"Reading the dataset as it streams failed ({first_line(err)}): run the same command "
                             "again to resume.") from None
        name = row_name(index, suffix)
        if shard.holds(name):
            yield Item(f"{WORK_FOLDER}/{name}", lambda cell=row[column], index=index: _cell_image(cell, column, index))


def row_name(index: int, suffix: str) -> str:
    return f"{index:08d}{suffix}"


def _cell_image(cell, column: str, index: int):
    """An undecoded image cell as the pipeline reads a photo: its bytes, or its file (a remote one, such as a
    streamed Hub image folder's, read through datasets' fsspec opener)."""
    if cell is None or (cell.get("bytes") is None and not cell.get("path")):
        raise InputImageError(f"Row {index} has no image in column {column!r}.")
    if cell.get("bytes") is not None:
        return cell["bytes"]
    from datasets.utils.file_utils import is_local_path, xopen
    if is_local_path(cell["path"]):
        return Path(cell["path"])
    with xopen(cell["path"], "rb") as remote:
        return remote.read()


def added_rows(dataset, out_dir: Path, margins: Sequence[float], settings: dict, suffix: str) -> Iterator[dict]:
    """ADDED_COLUMNS of every row and m, from the rows' records: FalcoError for a row without a record of
    these settings (a run that did not finish)."""
    for index in range(len(dataset)):
        yield from row_outputs(index, out_dir, margins, settings, suffix)


def streamed_rows(stream, out_dir: Path, margins: Sequence[float], settings: dict, suffix: str) -> Iterator[dict]:
    """Every column of every row and m: the stream's own cells (undecoded: the same bytes) and ADDED_COLUMNS."""
    for index, row in enumerate(stream.decode(False)):
        for added in row_outputs(index, out_dir, margins, settings, suffix):
            yield {**row, **added}


def row_outputs(index: int, out_dir: Path, margins: Sequence[float], settings: dict, suffix: str) -> list[dict]:
    """ADDED_COLUMNS of row ``index``, one dict per m, from its record."""
    relative = f"{WORK_FOLDER}/{row_name(index, suffix)}"
    record = read_record(output_paths(out_dir, relative, margins)[2])
    if record is None or record.get("settings") != settings:
        raise FalcoError(f"Row {index} has no record of this run ({relative}.json): run the same command again.")
    if record["status"] != "ok":
        return [{"anonymized": None, "margin": m, "identity_cosine": [], "recognizer_distance": [], "fake_index": [],
                 "error": record.get("error", "failed")} for m in margins]
    added = []
    for j, m in enumerate(margins):
        image = out_dir / record["outputs"][j]
        faces = [face for face in record["faces"] if face["margin"] == m]
        # A classical baseline's faces (falco.baselines) have no cosine, distance or fake: None for each face.
        added.append({"anonymized": {"bytes": image.read_bytes(), "path": image.name}, "margin": m,
                      "identity_cosine": [face.get("identity_cosine") for face in faces],
                      "recognizer_distance": [face.get("recognizer_distance") for face in faces],
                      "fake_index": [face.get("fake_index") for face in faces], "error": None})
    return added


def assemble(dataset, out_dir: Path, margins: Sequence[float], settings: dict, suffix: str) -> Path:
    """Writes OUT_DIR/dataset from the source dataset and the rows' records; returns its path.

    The original columns are the source's own rows (``select``: the same Arrow values, nothing decoded); the new
    ones are built from the records."""
    from datasets import Dataset, concatenate_datasets

    def build(scratch: Path):
        # A fresh cache folder: datasets caches a generator's output by the generator's code, not by the records.
        # No list among gen_kwargs: datasets would split the generator's work along it.
        added = Dataset.from_generator(added_rows, features=added_features(), cache_dir=str(scratch),
                                       gen_kwargs={"dataset": dataset, "out_dir": out_dir, "margins": tuple(margins),
                                                   "settings": settings, "suffix": suffix})
        # Flattened here, in the scratch folder: datasets would write it beside the source's own files otherwise
        # (into the input dataset's folder, for one read from disk).
        originals = dataset.select([index for index in range(len(dataset)) for _ in margins], keep_in_memory=True)
        originals = originals.flatten_indices(cache_file_name=str(scratch / "originals.arrow"))
        return concatenate_datasets([originals, added], axis=1)
    return _save_whole(out_dir, build)


def assemble_streamed(stream, out_dir: Path, margins: Sequence[float], settings: dict, suffix: str) -> Path:
    """``assemble`` for a stream, read a second time: its rows, each with its record's columns, written by
    ``Dataset.from_generator`` with the stream's features (the same columns, types and bytes as map-style)."""
    from datasets import Dataset, Features

    def build(scratch: Path):
        features = Features({**stream.features, **added_features()})
        return Dataset.from_generator(streamed_rows, features=features, cache_dir=str(scratch),
                                      gen_kwargs={"stream": stream, "out_dir": out_dir, "margins": tuple(margins),
                                                  "settings": settings, "suffix": suffix})
    return _save_whole(out_dir, build)


def _save_whole(out_dir: Path, build: Callable[[Path], Any]) -> Path:
    """Saves the dataset that ``build(scratch)`` makes (its caches in a scratch folder of the work folder) as
    OUT_DIR/dataset; returns its path.  It is written beside its place and renamed into it, so a reader (or an
    interrupted run) never meets half of one."""
    from datasets.exceptions import DatasetGenerationError
    work = out_dir / WORK_FOLDER
    final, partial, old = (out_dir / DATASET_FOLDER, out_dir / f"{DATASET_FOLDER}.partial",
                           out_dir / f"{DATASET_FOLDER}.old")
    for stale in (partial, old):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix="assemble-", dir=work))
    try:
        try:
            built = build(scratch)
        except DatasetGenerationError as err:   # datasets wraps what the generator raised
            if isinstance(err.__cause__, FalcoError):
                raise err.__cause__ from None
            raise FalcoError(f"Writing the dataset failed ({first_line(err.__cause__ or err)}): every row is done; "
                             "run the same command again.") from None
        built.save_to_disk(str(partial))
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
