"""anonymize --dataset --streaming: a dataset read as it streams gives what the map-style run gives."""

import json

import pytest

from falco.cli import main
from falco.config import OptimConfig
from falco.datasets_io import added_features, anonymize_dataset, dataset_items, open_dataset, write_dataset
from falco.errors import FalcoError, NoFaceError
from falco.photo_folders import Shard
from tests.test_datasets import crops, no_networks, original_bytes  # noqa: F401  (fixtures)

LABELS = ["ann", "bob", "none"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """The map-style runs' Arrow cache in the test's folder, not the user's."""
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))


def saved_as(kind, tmp_path, crops):  # noqa: F811  (the fixture's value, passed on)
    """The test's three images in a local folder that ``load_dataset`` reads: parquet files, or an image folder
    whose subfolders are the labels."""
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature
    folder = tmp_path / kind
    images = [crops["aligned"], crops["corner"], crops["blank"]]
    if kind == "parquet":
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=LABELS), "name": Value("string")})
        rows = {"image": images, "label": [0, 1, 2], "name": ["first", "second", "third"]}
        folder.mkdir()
        Dataset.from_dict(rows, features=features).to_parquet(str(folder / "train.parquet"))
    else:
        for index, (label, image) in enumerate(zip(LABELS, images)):
            (folder / "train" / label).mkdir(parents=True)
            image.save(folder / "train" / label / f"{index:02d}.png")
    return folder


@pytest.mark.slow
def test_a_streamed_dataset_resumes_and_gives_the_map_style_dataset(tmp_path, tiny_weights, crops, capsys,  # noqa: F811
                                                                     monkeypatch):
    import datasets

    from falco.pipeline import FalcoPipeline
    folder = saved_as("parquet", tmp_path, crops)
    args = ["--dataset", str(folder), "--aligned", "--margin", "0", "0.5", "--steps", "1", "--weights",
            str(tiny_weights), "--no-progress", "--device", "cpu"]
    assert main(["anonymize", *args, str(tmp_path / "mapped")]) == 0
    capsys.readouterr()

    anonymize, calls, stop_at = FalcoPipeline.anonymize, [], [2]

    def counted(self, photo, **kwargs):
        calls.append(photo)
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt
        return anonymize(self, photo, **kwargs)
    monkeypatch.setattr(FalcoPipeline, "anonymize", counted)
    streamed = tmp_path / "streamed"
    assert main(["anonymize", *args, "--streaming", str(streamed)]) == 130   # stopped during the second row
    assert "interrupted after 1 of 2 images" in capsys.readouterr().err
    assert not (streamed / "dataset").exists()
    first = (streamed / "items" / "00000000.png.json").read_text()
    assert json.loads(first)["status"] == "ok"

    calls.clear()
    stop_at[0] = 0
    assert main(["anonymize", *args, "--streaming", str(streamed)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["total"], summary["skipped"], summary["done"]) == (3, 1, 2)
    assert len(calls) == 2   # the first row is read past, not run again
    assert (streamed / "items" / "00000000.png.json").read_text() == first
    assert sorted(p.name for p in streamed.iterdir()) == ["dataset", "items"]

    mapped = datasets.load_from_disk(str(tmp_path / "mapped" / "dataset"))
    written = datasets.load_from_disk(str(streamed / "dataset"))
    assert written.column_names == mapped.column_names and written.features == mapped.features
    assert len(written) == 6 and written["label"] == [0, 0, 1, 1, 2, 2]
    assert original_bytes(written) == original_bytes(mapped)
    assert original_bytes(written, "anonymized") == original_bytes(mapped, "anonymized")
    assert written.remove_columns(["image", "anonymized"]).to_dict() == mapped.remove_columns(
        ["image", "anonymized"]).to_dict()


class _Recording:
    """A pipeline that records what it was given and finds no face in it."""
    source = "recording"

    def __init__(self):
        self.photos = []

    def anonymize(self, photo, **kwargs):
        self.photos.append(photo)
        raise NoFaceError("no face here")


@pytest.mark.parametrize("kind", ["parquet", "imagefolder"])
def test_each_process_takes_the_rows_map_style_gives_it_and_failures_are_recorded(kind, tmp_path, crops):  # noqa: F811
    import datasets
    folder = saved_as(kind, tmp_path, crops)
    source = open_dataset(str(folder), "train", None, streaming=True)
    mapped = open_dataset(str(folder), "train", None)
    assert source.streaming and isinstance(source.rows, datasets.IterableDataset) and not mapped.streaming
    out, seen = tmp_path / "out", []
    for rank in range(3):   # three processes: the row names' hashes give the first two of them rows
        pipeline, shard = _Recording(), Shard(rank, 3)
        summary = anonymize_dataset(pipeline, source, out, (0.0,), optim=OptimConfig(), fake_k=1, shard=shard,
                                    progress=False)
        share = dataset_items(mapped.rows, "image", shard, ".png")
        assert (summary.total, summary.failed) == (len(share), len(share))
        assert pipeline.photos == [item.load() for item in share]   # the same rows, read the same way
        seen += [item.relative for item in share]
        if rank == 0:   # the other process's rows have no record yet: no dataset, and no scratch left
            with pytest.raises(FalcoError, match="has no record of this run"):
                write_dataset(_Recording(), source, out, (0.0,), optim=OptimConfig(), fake_k=1, progress=False)
            assert sorted(p.name for p in out.iterdir()) == ["items"]
            records = list((out / "items").iterdir())
            assert records and all(p.is_file() for p in records)
    assert sorted(seen) == [f"items/{i:08d}.png" for i in range(3)]   # each row in exactly one process
    write_dataset(_Recording(), source, out, (0.0,), optim=OptimConfig(), fake_k=1, progress=False)
    written = datasets.load_from_disk(str(out / "dataset"))
    assert written["label"] == [0, 1, 2] and written["error"] == ["no face here"] * 3
    assert written["anonymized"] == [None] * 3
    files = sorted(folder.rglob("*.png"))   # an image folder's rows name their files; the written dataset holds them
    assert original_bytes(written) == [cell if cell is not None else files[index].read_bytes()
                                       for index, cell in enumerate(original_bytes(mapped.rows))]
    assert written.features == datasets.Features({**mapped.rows.features, **added_features()})


def test_a_stream_that_breaks_off_is_one_error_and_what_was_read_stays_done(tmp_path, crops):  # noqa: F811
    folder = saved_as("parquet", tmp_path, crops)
    (folder / "train_zz-damaged.parquet").write_bytes(b"not parquet")   # read after train.parquet's rows
    source = open_dataset(str(folder), "train", None, streaming=True)
    pipeline = _Recording()
    with pytest.raises(FalcoError, match="as it streams failed .*run the same command again to resume"):
        anonymize_dataset(pipeline, source, tmp_path / "out", (0.0,), optim=OptimConfig(), fake_k=1, progress=False)
    assert len(pipeline.photos) == 3
    assert sorted(p.name for p in (tmp_path / "out" / "items").iterdir()) == [f"{i:08d}.png.json" for i in range(3)]


def test_streaming_without_a_dataset_is_a_usage_error(tmp_path, no_networks, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as stop:
        main(["anonymize", str(tmp_path), str(tmp_path / "out"), "--streaming"])
    assert stop.value.code == 2 and "--streaming reads a --dataset" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
