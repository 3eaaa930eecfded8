"""Aligned inputs, several photos per optimisation, Hugging Face datasets in and out, and accelerate's processes."""

import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from falco.cli import SHARD_GONE, main
from falco.config import FaceConfig, OptimConfig
from falco.datasets_io import ADDED_COLUMNS
from falco.errors import NoFaceError
from falco.faces import align_face
from falco.photo_folders import anonymize_tree

QUICK = OptimConfig(steps=2)
WORKTREE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def crops(tiny_pipeline, astronaut):
    """The test photo's FFHQ crop (256 px); the same crop small in a corner of a larger grey image (not aligned);
    a grey image without a face."""
    photo = Image.open(astronaut).convert("RGB")
    crop = align_face(photo, tiny_pipeline.detect(photo)[0].landmarks, size=256).image
    corner = Image.new("RGB", (384, 384), "gray")
    corner.paste(crop.resize((192, 192)), (0, 0))
    return {"aligned": crop, "corner": corner, "blank": Image.new("RGB", (200, 200), "gray")}


def last(stream):
    event = None
    for event in stream:
        pass
    return event


@pytest.mark.slow
def test_an_aligned_input_is_anonymized_as_a_crop_of_its_own_size(tiny_pipeline, crops, monkeypatch):
    scanned = []
    detect = tiny_pipeline.analyzer.detect
    monkeypatch.setattr(tiny_pipeline.analyzer, "detect", lambda photo: scanned.append(photo.size) or detect(photo))
    result = last(tiny_pipeline.anonymize(crops["aligned"], margins=(0.0, 0.5), optim=QUICK, aligned=True))
    # Landmarks only, on a small copy: no detection on the photo, no alignment, no paste-back.
    assert scanned and max(max(size) for size in scanned) <= FaceConfig().aligned_check_size
    assert [photo.size for photo in result.photos] == [crops["aligned"].size] * 2
    assert [(face.face_index, face.margin) for face in result.faces] == [(0, 0.0), (0, 0.5)]
    for face, photo in zip(result.faces, result.photos):   # the photo is the face, resized to the input's size
        assert np.array_equal(np.asarray(photo), np.asarray(face.anonymized.resize(photo.size, Image.LANCZOS)))
        assert face.aligned.size == (FaceConfig().aligned_size,) * 2 and math.isfinite(face.recognizer_distance)
    assert result.alignment.looks_aligned and result.alignment.offset <= FaceConfig().aligned_max_offset

    corner = last(tiny_pipeline.anonymize(crops["corner"], optim=QUICK, aligned=True))
    assert corner.photos[0].size == (384, 384)
    assert not corner.alignment.looks_aligned and corner.alignment.offset > FaceConfig().aligned_max_offset

    blank = last(tiny_pipeline.anonymize(crops["blank"], optim=QUICK, aligned=True))
    assert blank.alignment.offset is None and not blank.alignment.looks_aligned
    assert math.isnan(blank.faces[0].recognizer_distance)   # no landmarks for dlib's recogniser
    assert blank.face_records()[0]["recognizer_distance"] is None


@pytest.mark.slow
@pytest.mark.parametrize("max_batch", [None, 64])
def test_a_batch_of_photos_gets_the_results_of_one_photo_at_a_time(tiny_pipeline, astronaut, max_batch):
    from dataclasses import replace
    optim = replace(QUICK, max_batch=max_batch)
    photo = Image.open(astronaut).convert("RGB")
    photos = [photo, Image.new("RGB", (120, 90), "gray"), photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    batched = last(tiny_pipeline.anonymize_batch(photos, margins=(0.0, 0.5), optim=optim))
    assert isinstance(batched[1], NoFaceError)   # in its place; the others go on
    for one, together in ((photos[0], batched[0]), (photos[2], batched[2])):
        alone = last(tiny_pipeline.anonymize(one, margins=(0.0, 0.5), optim=optim))
        assert len(alone.faces) == len(together.faces) == 2
        for a, b in zip(alone.faces, together.faces):
            assert (a.face_index, a.margin, a.fake_index) == (b.face_index, b.margin, b.fake_index)
            if max_batch is None:
                # One item per forward and backward pass (the CPU's default): the same operations on the same
                # values, and Adam is elementwise, so nothing can differ.
                assert torch.equal(a.wplus, b.wplus) and a.identity_cosine == b.identity_cosine
                assert np.array_equal(np.asarray(a.anonymized), np.asarray(b.anonymized))
            else:
                # Every item in one pass: batched convolutions round differently (as in test_pipeline's batch of m).
                torch.testing.assert_close(a.wplus, b.wplus, atol=1e-5, rtol=1e-5)
                assert a.identity_cosine == pytest.approx(b.identity_cosine, abs=1e-5)


@pytest.mark.slow
def test_the_command_line_runs_aligned_crops_in_batches_and_counts_the_unaligned(tmp_path, tiny_weights, crops,
                                                                                   capsys, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    crops["aligned"].save(folder / "a.png")
    crops["corner"].save(folder / "b.png")
    crops["blank"].save(folder / "c.png")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        code = main(["anonymize", str(folder), str(out), "--aligned", "--batch", "2", "--steps", "1",
                     "--weights", str(tiny_weights), "--no-progress", "--device", "cpu"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and (summary["done"], summary["not_aligned"]) == (3, 2)
    assert caplog.text.count("do not look FFHQ-aligned") == 1 and "2 of 3 images" in caplog.text
    for name, image in (("a.png", crops["aligned"]), ("b.png", crops["corner"]), ("c.png", crops["blank"])):
        record = json.loads((out / (name + ".json")).read_text())
        assert record["settings"]["aligned"] is True and record["outputs"][0] == name
        assert record["alignment"]["looks_aligned"] == (name == "a.png")
        assert Image.open(out / name).size == image.size
    # The same settings without --aligned are other settings: every image is done again.
    again = anonymize_tree(_Counting(), folder, out, optim=OptimConfig(steps=1), progress=False)
    assert again.redone == 3


class _Counting:
    source = "counting"

    def anonymize(self, photo, **kwargs):
        raise NoFaceError("counted")


def make_dataset(tmp_path, crops):
    """A dataset on disk: two faces and a grey image, with a label column, as datasets stores them."""
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["ann", "bob", "none"]),
                         "name": Value("string")})
    rows = {"image": [crops["aligned"], crops["corner"], crops["blank"]], "label": [0, 1, 2],
            "name": ["first", "second", "third"]}
    path = tmp_path / "source"
    Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return path


def original_bytes(dataset, column="image"):
    from datasets import Image as ImageFeature
    return [cell["bytes"] for cell in dataset.cast_column(column, ImageFeature(decode=False))[column]]


@pytest.mark.slow
def test_a_dataset_becomes_a_dataset_with_every_column_kept(tmp_path, tiny_weights, crops, capsys, monkeypatch):
    import datasets
    source = make_dataset(tmp_path, crops)
    out = tmp_path / "out"
    pushed = []
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo, **k: pushed.append((repo, len(self))))
    argv = ["anonymize", "--dataset", str(source), str(out), "--aligned", "--margin", "0", "0.5", "--steps", "1",
            "--weights", str(tiny_weights), "--no-progress", "--device", "cpu", "--push-to-hub", "me/anonymized"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["total"], summary["done"], summary["dataset"]) == (3, 3, str(out / "dataset"))
    assert pushed == [("me/anonymized", 6)]

    original = datasets.load_from_disk(str(source))
    written = datasets.load_from_disk(str(out / "dataset"))
    assert written.column_names == original.column_names + list(ADDED_COLUMNS)
    assert written.features["label"] == original.features["label"]
    assert written["label"] == [0, 0, 1, 1, 2, 2] and written["name"] == ["first"] * 2 + ["second"] * 2 + ["third"] * 2
    assert original_bytes(written) == [b for b in original_bytes(original) for _ in range(2)]   # unchanged bytes
    assert written["margin"] == [0.0, 0.5] * 3 and written["error"] == [None] * 6
    records = [json.loads((out / "items" / f"{i:08d}.png.json").read_text()) for i in range(3)]
    for row, image in zip(written, [crops[k] for k in ("aligned", "aligned", "corner", "corner", "blank", "blank")]):
        assert row["anonymized"].size == image.size
        record = records[written["name"].index(row["name"]) // 2]
        faces = [f for f in record["faces"] if f["margin"] == row["margin"]]
        assert row["identity_cosine"] == [f["identity_cosine"] for f in faces] and len(faces) == 1
        assert row["fake_index"] == [f["fake_index"] for f in faces]
        assert row["recognizer_distance"] == [f["recognizer_distance"] for f in faces]
    assert written[4]["recognizer_distance"] == [None]   # no face on the grey image: no dlib landmarks

    # A rerun skips every row and writes the same dataset.
    assert main(argv[:-2]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 3
    rewritten = datasets.load_from_disk(str(out / "dataset"))
    assert rewritten.to_dict() == written.to_dict()
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "items"]   # no scratch left
    assert sorted(p.name for p in source.iterdir()) == ["data-00000-of-00001.arrow", "dataset_info.json",
                                                        "state.json"]   # nothing written beside the input


@pytest.mark.slow
def test_a_failed_row_keeps_its_columns_and_says_why(tmp_path, tiny_weights, crops, capsys):
    import datasets
    source = make_dataset(tmp_path, crops)
    out = tmp_path / "out"
    code = main(["anonymize", "--dataset", str(source), str(out), "--steps", "1", "--weights", str(tiny_weights),
                 "--no-progress", "--device", "cpu"])   # not --aligned: the grey image has no face to detect
    assert code == 3
    written = datasets.load_from_disk(str(out / "dataset"))
    assert written["label"] == [0, 1, 2] and written[2]["anonymized"] is None
    assert "No face" in written[2]["error"] and written[2]["identity_cosine"] == []
    assert written[0]["error"] is None and written[0]["anonymized"].size == crops["aligned"].size


@pytest.fixture
def no_networks(monkeypatch):
    from falco.pipeline import FalcoPipeline
    monkeypatch.setattr(FalcoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("networks loaded"))


@pytest.mark.parametrize("option, match", [
    (["--image-column", "label"], "does not hold images"), (["--image-column", "photo"], "no column 'photo'"),
    (["--split", "test"], "has no split 'test'; it has train"), (["--batch", "0"], "at least 1")])
def test_bad_dataset_options_are_usage_errors_before_the_networks_load(tmp_path, crops, no_networks, capsys, option,
                                                                        match):
    import datasets
    source = make_dataset(tmp_path, crops)
    if "--split" in option:   # a dataset of named splits
        datasets.DatasetDict({"train": datasets.load_from_disk(str(source))}).save_to_disk(str(tmp_path / "splits"))
        source = tmp_path / "splits"
    with pytest.raises(SystemExit) as stop:
        main(["anonymize", "--dataset", str(source), str(tmp_path / "out"), *option])
    assert stop.value.code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shard_points_to_accelerate(tmp_path, no_networks, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["anonymize", str(tmp_path), str(tmp_path / "out"), "--shard", "0/2"])
    assert stop.value.code == 2 and SHARD_GONE in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_accelerate_processes_write_what_one_process_writes(tmp_path, tiny_weights, crops):
    import datasets
    source = make_dataset(tmp_path, crops)
    # One thread per process in both runs: the same arithmetic, whatever the machine.
    env = {**os.environ, "PYTHONPATH": str(WORKTREE), "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    args = ["anonymize", "--dataset", str(source), "--aligned", "--steps", "1", "--weights", str(tiny_weights),
            "--no-progress", "--device", "cpu"]
    # accelerate's --cpu flag picks its single-process launcher; --multi_gpu is the torchrun launcher, and on a
    # machine without GPUs (or with --device cpu) the processes join over gloo.  The single process runs first, not
    # beside the pair: three processes at once made this test the suite's peak of memory.
    one = subprocess.run([sys.executable, "-m", "falco.cli", *args, str(tmp_path / "one")], env=env,
                         cwd=WORKTREE, capture_output=True, text=True, timeout=600)
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                          "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", str(_free_port()), "-m", "falco.cli", *args, str(tmp_path / "two")],
                         env=env, cwd=WORKTREE, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    lines = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and (lines[0]["total"], lines[0]["done"]) == (3, 3)   # one merged summary
    shares = dict(re.findall(r"process (\d) of 2 takes (\d) of the inputs", two.stderr))
    assert shares.keys() == {"1", "2"} and sum(map(int, shares.values())) == 3, two.stderr[-3000:]
    first = datasets.load_from_disk(str(tmp_path / "one" / "dataset"))
    second = datasets.load_from_disk(str(tmp_path / "two" / "dataset"))
    assert original_bytes(first, "anonymized") == original_bytes(second, "anonymized")
    assert original_bytes(first) == original_bytes(second)
    assert first.remove_columns(["image", "anonymized"]).to_dict() == second.remove_columns(
        ["image", "anonymized"]).to_dict()
