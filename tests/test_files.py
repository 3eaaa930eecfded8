"""How output files are written (falco.output_files) and named (falco.names)."""

import os
from pathlib import Path

import numpy as np
import pytest

from falco.names import (
    LATENTS_NAME,
    RECORD_NAME,
    ZIP_NAME,
    anonymized_face_name,
    face_name,
    output_paths,
    photo_name,
)
from falco.output_files import current_umask, save_json, save_tensors


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_save_tensors_writes_the_tensors_with_the_umasks_permissions(tmp_path, umask):
    import torch
    from safetensors import safe_open

    tensors = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor([3])}
    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        path = save_tensors(tmp_path / "codes.safetensors", tensors, metadata={"what": "test"})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.safetensors"]   # no temporary file left
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"what": "test"}
        assert all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())


def test_save_json_keeps_each_files_format(tmp_path):
    # Records and run.json end without a newline, metrics.json and the manifest with one: bytes as they always were.
    assert save_json(tmp_path / "r.json", {"a": [1]}).read_text() == '{\n  "a": [\n    1\n  ]\n}'
    assert save_json(tmp_path / "c.json", {"a": [1]}, indent=1).read_text() == '{\n "a": [\n  1\n ]\n}'
    metrics = save_json(tmp_path / "m.json", {"x": np.float32(0.5)}, final_newline=True, default=float)
    assert metrics.read_text() == '{\n  "x": 0.5\n}\n'


def test_save_json_leaves_the_earlier_file_whole_when_a_write_fails(tmp_path, monkeypatch):
    path = save_json(tmp_path / "record.json", {"status": "ok"})
    with pytest.raises(TypeError):
        save_json(path, {"status": object()})   # not JSON: fails before a byte is written

    def half_then_full_disk(self, text, *args, **kwargs):
        with open(self, "w") as out:
            out.write(text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    with pytest.raises(OSError, match="No space"):
        save_json(path, {"status": "failed", "error": "a longer record than the first"})
    monkeypatch.undo()
    assert path.read_text() == '{\n  "status": "ok"\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]   # no half-written file beside it


def test_the_apps_download_names():
    # The names the page, the API and README spell (tests/test_app_units.py checks the files a run writes).
    assert [photo_name(m) for m in (0, 0.5, 1.0, 0.25)] == ["photo_m0.png", "photo_m0.5.png", "photo_m1.png",
                                                            "photo_m0.25.png"]
    assert [face_name(2, image) for image in ("aligned", "inversion", "fake")] == [
        "face2_aligned.png", "face2_inversion.png", "face2_fake.png"]
    assert anonymized_face_name(1, 0.5) == "face1_m0.5_anonymized.png"
    assert anonymized_face_name(10, 0.0) == "face10_m0_anonymized.png"
    assert (LATENTS_NAME, RECORD_NAME, ZIP_NAME) == ("wplus.safetensors", "run.json", "falco_results.zip")
    with pytest.raises(ValueError, match="anonymized"):
        face_name(1, "anonymized")   # that one depends on m: anonymized_face_name


def test_the_command_lines_output_names(tmp_path):
    images, latents, record = output_paths(tmp_path, "a/x.jpg", [0.5])
    assert images == [tmp_path / "a" / "x.jpg"]   # one m: the input's own name
    assert (latents, record) == (tmp_path / "a" / "x.jpg.latents.safetensors", tmp_path / "a" / "x.jpg.json")
    images, latents, record = output_paths(tmp_path, "a/x.jpg", [0.0, 0.5, 1.0])
    assert [p.name for p in images] == ["x.m0.jpg", "x.m0.5.jpg", "x.m1.jpg"]
    assert (latents.name, record.name) == ("x.jpg.latents.safetensors", "x.jpg.json")   # the same for any m
