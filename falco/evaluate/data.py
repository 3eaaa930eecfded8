"""What an evaluation compares: originals and their anonymized images, from the three kinds of input.

    folders      ORIGINALS/a/x.jpg beside ANONYMIZED/a/x.jpg (any two trees with the same relative paths)
    cli output   ANONYMIZED written by ``falco anonymize ORIGINALS ANONYMIZED``: its records (x.jpg.json) give
                 the m values and the images (x.jpg, or x.m0.5.jpg per m)
    dataset      a ``datasets`` dataset (load_from_disk folder or Hub name) with a row per input row and per m:
                 the original image column, ``anonymized``, ``margin`` and ``error``

Identity labels and attribute labels come from the dataset's columns, or for folders from a CSV.  Several
anonymized sets of the same originals, each named (``--compare blur=DIR falco=DIR``), combine into one set whose
images carry their method.  Images are read when a metric needs them, never all at once.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from PIL import Image

from falco.config import CliConfig
from falco.errors import FalcoError, first_line
from falco.faces.io import load_photo
from falco.names import output_paths
from falco.photo_folders import list_images, method_name, read_record

# CelebA's 40 binary attributes, as its annotation file names them: found among a dataset's columns (any case)
# when no --attribute-columns are given.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
DATASET_COLUMNS = {"anonymized": "anonymized", "margin": "margin", "error": "error"}
LABELS_PATH_COLUMNS = ("path", "file", "filename", "image")   # the CSV column naming an original's relative path
# What the report says of a run's settings, as a record keeps them (falco.photo_folders.run_settings): name -> path.
RECORD_SETTINGS = {"method": None, "margins": ("margins",), "steps": ("optim", "steps"),
                   "lambda_id": ("optim", "lambda_id"), "lambda_attr": ("optim", "lambda_attr"),
                   "fake_k": ("fake_k",), "weights": ("weights",), "aligned": ("aligned",)}
# What only FALCO's optimisation uses: a baseline's records keep the defaults, which would say nothing of it.
OPTIMISATION_SETTINGS = ("margins", "steps", "lambda_id", "lambda_attr", "fake_k")

ImageLoader = Callable[[], Image.Image]


@dataclass(frozen=True)
class Original:
    key: str                                 # relative path, or a digest of the dataset row's image
    load: ImageLoader
    identity: str | None = None              # the person, when the input has identity labels
    attributes: tuple[int, ...] | None = None   # 0/1 per EvaluationSet.attribute_names


@dataclass(frozen=True)
class Anonymized:
    key: str                                 # its original's
    margin: float | None                     # None: two plain folders, which do not say, or a method without m
    load: ImageLoader
    method: str | None = None                # its set's name in a comparison (--compare NAME=PATH)

    @property
    def variant(self) -> tuple[str | None, float | None]:
        """What the table gives a row: the method and the m."""
        return self.method, self.margin


@dataclass
class EvaluationSet:
    kind: str                                # "folders", "cli output" or "dataset"
    originals: list[Original]
    anonymized: list[Anonymized]
    attribute_names: tuple[str, ...] = ()
    skipped: dict[str, int] = field(default_factory=dict)   # why some inputs have no anonymized image
    # What the records say of the runs (RECORD_SETTINGS' names -> the distinct values found), per method (None:
    # the one set of a run without --compare); empty where the input keeps no records (plain folders, datasets).
    settings: dict[str | None, dict[str, list]] = field(default_factory=dict)

    @property
    def margins(self) -> list[float | None]:
        found = {a.margin for a in self.anonymized}
        return sorted(found, key=_margin_order)

    @property
    def variants(self) -> list[tuple[str | None, float | None]]:
        """(method, m) of the rows: the methods in the order given, each one's m in increasing order."""
        methods = list(dict.fromkeys(a.method for a in self.anonymized))
        found = set(a.variant for a in self.anonymized)
        return sorted(found, key=lambda v: (methods.index(v[0]), _margin_order(v[1])))

    @property
    def has_identities(self) -> bool:
        return bool(self.originals) and all(o.identity is not None for o in self.originals)

    def limited(self, count: int | None) -> EvaluationSet:
        """The first ``count`` originals (in key order) that have an anonymized image, with those images."""
        if count is None:
            return self
        keys = {a.key for a in self.anonymized}
        kept = [o for o in self.originals if o.key in keys][:count]
        chosen = {o.key for o in kept}
        return replace(self, originals=kept, anonymized=[a for a in self.anonymized if a.key in chosen])


@dataclass(frozen=True)
class Labels:
    """Which input columns hold the labels; None / () for none (attributes: None autodetects CelebA's)."""
    identity_column: str | None = None
    attribute_columns: tuple[str, ...] | None = None
    csv: Path | None = None                  # folders' labels: a row per original, its relative path first


def load_evaluation_set(originals: str | Path, anonymized: str | Path | None = None, labels: Labels = Labels(),
                        image_column: str = "image", split: str = "train", margin: float | None = None,
                        config: CliConfig = CliConfig()) -> EvaluationSet:
    """Pairs from two folders (a CLI output folder among them) or, with ``anonymized`` None, a dataset."""
    if anonymized is None:
        return _from_dataset(str(originals), labels, image_column, split)
    originals, anonymized = Path(originals), Path(anonymized)
    for folder in (originals, anonymized):
        if not folder.is_dir():
            raise FalcoError(f"{folder} is not a folder.")
    files = list_images(originals, config.image_extensions, exclude=anonymized.resolve())
    if not files:
        raise FalcoError(f"{originals} holds no image ({', '.join(config.image_extensions)}).")
    table = _read_labels_csv(labels.csv) if labels.csv else {}
    names = _attribute_names(list(next(iter(table.values()), {})), labels) if table else ()
    found = [_original_from_row(f, partial(load_photo, originals / f), table.get(f), labels.identity_column, names)
             for f in files]
    settings = {}
    if any(anonymized.joinpath(f + ".json").is_file() for f in files):
        paired, skipped, recorded = _cli_output(anonymized, files)
        kind, settings = "cli output", {None: summarise_settings(recorded)}
    else:
        paired, skipped = _mirror(anonymized, files, margin)
        kind = "folders"
    if not paired:
        raise FalcoError(f"{anonymized} holds no anonymized image for the images of {originals}"
                         f" ({_describe(skipped)}).")
    return EvaluationSet(kind, found, paired, names, skipped, settings)


def combine_sets(named: dict[str, EvaluationSet]) -> EvaluationSet:
    """Several anonymized sets of the same originals as one, each image carrying its set's name as its method.
    The originals are the first set's (with those only the others have); a set that shares none of them is
    refused, since its rows would compare nothing."""
    if not named:
        raise FalcoError("--compare names no anonymized set.")
    first = next(iter(named.values()))
    originals = {o.key: o for o in first.originals}
    anonymized, skipped, settings = [], {}, {}
    for name, part in named.items():
        keys = {o.key for o in part.originals}
        if not keys & set(originals):
            raise FalcoError(f"The set {name} has none of the originals of {next(iter(named))}: a comparison needs "
                             "anonymized sets of the same originals.")
        originals.update((o.key, o) for o in part.originals if o.key not in originals)
        anonymized += [replace(a, method=name) for a in part.anonymized]
        skipped.update({f"{name}: {reason}": count for reason, count in part.skipped.items()})
        if part.settings:
            settings[name] = next(iter(part.settings.values()))
    kinds = ", ".join(dict.fromkeys(part.kind for part in named.values()))
    return EvaluationSet(kinds, sorted(originals.values(), key=lambda o: o.key), anonymized, first.attribute_names,
                         skipped, settings)


def summarise_settings(recorded: Sequence[dict]) -> dict[str, list]:
    """RECORD_SETTINGS' values over a run's records: for each name, the distinct values, in the order found."""
    summary: dict[str, list] = {}
    for settings in recorded:
        method = method_name(settings)
        own = {k: (k,) for k in settings.get("method") or {} if k != "name"}   # a baseline's own, e.g. blur_sigma
        for name, path in {**RECORD_SETTINGS, **own}.items():
            if method != "falco" and name in OPTIMISATION_SETTINGS:
                continue
            value = method if path is None else _lookup(settings.get("method") or {} if name in own else settings,
                                                        path)
            if name == "weights" and isinstance(value, str) and Path(value).is_absolute():
                value = f"local folder {Path(value).name}"   # a report is sent around: no server paths in it
            if value is None:
                continue
            seen = summary.setdefault(name, [])
            if value not in seen:
                seen.append(value)
    return summary


def _lookup(settings: dict, path: Sequence[str]):
    for part in path:
        settings = settings.get(part) if isinstance(settings, dict) else None
    return settings


def reference_images(folder: str | Path, config: CliConfig = CliConfig()) -> list[ImageLoader]:
    """The images of a folder tree (--fid-reference: another set FID measures the anonymized images against)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FalcoError(f"The FID reference {folder} is not a folder.")
    files = list_images(folder, config.image_extensions)
    if len(files) < 2:
        raise FalcoError(f"The FID reference {folder} holds {len(files)} image; FID needs two at least.")
    return [partial(load_photo, folder / f) for f in files]


def _margin_order(margin: float | None) -> float:
    return -1.0 if margin is None else margin


def _mirror(anonymized: Path, files: Sequence[str], margin: float | None) -> tuple[list[Anonymized], dict]:
    paired, skipped = [], {}
    for relative in files:
        path = anonymized / relative
        if path.is_file():
            paired.append(Anonymized(relative, margin, partial(load_photo, path)))
        else:
            skipped["missing"] = skipped.get("missing", 0) + 1
    return paired, skipped


def _cli_output(out_dir: Path, files: Sequence[str]) -> tuple[list[Anonymized], dict, list[dict]]:
    """The images a ``falco anonymize`` run recorded as done, with their m (falco.photo_folders's naming), and
    the settings of those records."""
    paired, skipped, recorded = [], {}, []
    for relative in files:
        record = read_record(out_dir / (relative + ".json"))
        if record is None:
            reason = "missing"
        elif record.get("status") != "ok":
            reason = "failed"
        else:
            margins = (record.get("settings") or {}).get("margins") or (record.get("params") or {}).get("margins")
            images = output_paths(out_dir, relative, margins)[0] if margins else []
            if images and all(p.is_file() for p in images):
                # m None: a baseline's one image (falco.baselines), which has no m
                paired += [Anonymized(relative, None if m is None else float(m), partial(load_photo, p))
                           for m, p in zip(margins, images)]
                recorded.append(record.get("settings") or {})
                continue
            reason = "missing"
        skipped[reason] = skipped.get(reason, 0) + 1
    return paired, skipped, recorded


def _read_labels_csv(path: Path) -> dict[str, dict[str, str]]:
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise FalcoError(f"Cannot read the labels file {path}: {err.strerror or err}.") from None
    if not rows:
        return {}
    columns = list(rows[0])
    key = next((c for c in columns if c.lower() in LABELS_PATH_COLUMNS), columns[0])
    return {row[key]: {c: v for c, v in row.items() if c != key} for row in rows}


def _attribute_names(columns: Sequence[str], labels: Labels) -> tuple[str, ...]:
    if labels.attribute_columns is not None:
        missing = [c for c in labels.attribute_columns if c not in columns]
        if missing:
            raise FalcoError(f"No attribute column {', '.join(missing)}; the columns are {', '.join(columns)}.")
        return tuple(labels.attribute_columns)
    celeba = {name.lower() for name in CELEBA_ATTRIBUTES}
    return tuple(c for c in columns if c.lower() in celeba)


def _binary(value) -> int:
    """CelebA writes -1/1, others 0/1 or booleans or their text: positive is 1."""
    if isinstance(value, str):
        value = value.strip().lower()
        if value in ("true", "yes"):
            return 1
        if value in ("false", "no", ""):
            return 0
        value = float(value)
    return int(float(value) > 0)


def _original_from_row(key: str, load: ImageLoader, row: dict | None, identity_column: str | None,
                       names: Sequence[str]) -> Original:
    if row is None:
        return Original(key, load)
    identity = None
    if identity_column is not None:
        if identity_column not in row:
            raise FalcoError(f"No identity column {identity_column}; the columns are {', '.join(row)}.")
        identity = str(row[identity_column])
    attributes = tuple(_binary(row[n]) for n in names) if names else None
    return Original(key, load, identity, attributes)


def _from_dataset(name: str, labels: Labels, image_column: str, split: str) -> EvaluationSet:
    import datasets

    dataset = _open_dataset(name, split)
    columns = list(dataset.column_names)
    needed = [image_column, *DATASET_COLUMNS.values()]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise FalcoError(f"The dataset {_dataset_label(name)} has no column {', '.join(missing)} (its columns: "
                         f"{', '.join(columns)}); --image-column names the original image's.")
    raw = dataset.cast_column(image_column, datasets.Image(decode=False))
    raw = raw.cast_column(DATASET_COLUMNS["anonymized"], datasets.Image(decode=False))
    names = _attribute_names([c for c in columns if c not in needed], labels)
    metadata = [c for c in columns if c not in (image_column, DATASET_COLUMNS["anonymized"])]
    originals: dict[str, Original] = {}
    anonymized, skipped = [], {}
    for index, (original, row) in enumerate(zip(raw.select_columns([image_column]), raw.select_columns(metadata))):
        key = _image_key(original[image_column], index)
        if key not in originals:
            originals[key] = _original_from_row(key, partial(_row_image, raw, index, image_column), row,
                                                labels.identity_column, names)
        if row[DATASET_COLUMNS["error"]] is not None:
            skipped["failed"] = skipped.get("failed", 0) + 1
            continue
        margin = row[DATASET_COLUMNS["margin"]]
        # A float32 column holds 0.9 as 0.8999999762: rounded, its rows group and print as the m that was asked for.
        anonymized.append(Anonymized(key, None if margin is None else round(float(margin), 6),
                                     partial(_row_image, raw, index, DATASET_COLUMNS["anonymized"])))
    if not anonymized:
        raise FalcoError(f"The dataset {_dataset_label(name)} has no anonymized image ({_describe(skipped)}).")
    return EvaluationSet("dataset", sorted(originals.values(), key=lambda o: o.key), anonymized, names, skipped)


def _open_dataset(name: str, split: str):
    import datasets

    try:
        if Path(name).exists():
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(name, split=split)
    except (OSError, ValueError) as err:   # not found, the Hub unreachable (ConnectionError), a malformed name
        raise FalcoError(f"Cannot open the dataset {_dataset_label(name)} (a save_to_disk folder or a Hub name): "
                         f"{first_line(err)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise FalcoError(f"The dataset has no split {split!r} (it has {', '.join(loaded)}); pass --split.")
        loaded = loaded[split]
    return loaded


def _dataset_label(name: str) -> str:
    """How messages name a dataset: a Hub name as given, a local folder by its own name (no server path)."""
    return Path(name).name if Path(name).exists() else name


def _image_key(value: dict | None, index: int) -> str:
    """The rows of one original (one per m) share its image: a digest of its bytes, or its path."""
    if value is None:
        return f"row{index}"
    if value.get("bytes"):
        return hashlib.sha1(value["bytes"]).hexdigest()[:16]
    return value.get("path") or f"row{index}"


def _row_image(dataset, index: int, column: str) -> Image.Image:
    value = dataset[index][column]
    if value is None:
        raise FalcoError(f"Row {index} has no {column} image.")
    return load_photo(value["bytes"] if value.get("bytes") else value["path"])


def _describe(skipped: dict[str, int]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in skipped.items()) or "none found"
