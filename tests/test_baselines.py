"""The baselines of the comparison table (falco.baselines) and the command line's ``anonymize --method``."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from falco.baselines import NO_MARGIN, ClassicalBaseline, NearestFake, obscure
from falco.config import BaselineConfig, OptimConfig
from falco.faces import FaceAnalyzer, align_face, load_photo, paste_faces

FILL = BaselineConfig().mask_fill


def variation(pixels: np.ndarray, where: np.ndarray | None = None) -> float:
    """Mean absolute difference between horizontal neighbours (inside ``where`` when given): lower is smoother."""
    steps = np.abs(np.diff(pixels.astype(np.float64), axis=1)).sum(-1)
    return float(steps[where[:, 1:] & where[:, :-1]].mean() if where is not None else steps.mean())


@pytest.fixture(scope="module")
def analyzer(tiny_weights):
    """dlib's landmarks from the file the pipelines and the command line read (one load for all: dlib's models are
    cached by path)."""
    from falco.weights import fetch_weights
    return FaceAnalyzer(fetch_weights(str(tiny_weights), names=("dlib_landmarks",), progress=False).dlib_landmarks)


@pytest.fixture(scope="module")
def face_region(astronaut, analyzer):
    """The astronaut photo and FALCO's paste weight of its usable face in the photo (0 to 255): a white face
    pasted onto black through the same mask."""
    photo = load_photo(astronaut)
    aligned = align_face(photo, analyzer.detect(photo)[0].landmarks)
    black = Image.new("RGB", photo.size)
    weight = np.asarray(paste_faces(black, [(aligned, Image.new("RGB", (aligned.size,) * 2, "white"))]))[:, :, 0]
    return photo, weight


def test_each_filter_hides_the_crop_as_it_says(astronaut):
    crop = load_photo(astronaut).resize((128, 128))
    blurred, pixelated, masked = (np.asarray(obscure(crop, m)) for m in ("blur", "pixelate", "mask"))
    assert blurred.shape == pixelated.shape == masked.shape == (128, 128, 3)
    assert variation(blurred) < variation(np.asarray(crop)) / 2
    cells = BaselineConfig().pixelate_cells
    blocks = pixelated.reshape(cells, 128 // cells, cells, 128 // cells, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()   # every block one colour
    assert (masked == FILL).all()
    with pytest.raises(ValueError, match="not a classical method"):
        obscure(crop, "falco")


@pytest.mark.slow
def test_classical_methods_change_the_face_region_and_nothing_else(face_region, analyzer):
    photo, weight = face_region
    original = np.asarray(photo)
    outside, inside = weight == 0, weight == 255
    assert inside.sum() > 1000 and outside.sum() > original.shape[0] * original.shape[1] / 2
    outs = {}
    for method in ("blur", "pixelate", "mask"):
        result = next(ClassicalBaseline(method, analyzer).anonymize(photo))
        out = outs[method] = np.asarray(result.photo)
        assert out.shape == original.shape
        assert (out[outside] == original[outside]).all(), method   # FALCO's paste mask: the rest keeps its bytes
        assert (out[inside] != original[inside]).any(-1).mean() > 0.5, method
        assert result.face_records() == [{"face": 1, "margin": None}] and result.margins == NO_MARGIN
        assert result.params["method"] == method
    assert variation(outs["blur"], inside) < variation(original, inside) / 2
    assert (outs["mask"][inside] == FILL).all()


@pytest.fixture
def photos(tmp_path, astronaut):
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(astronaut, root / "astronaut.png")
    Image.new("RGB", (160, 120), "gray").save(root / "blank.png")
    return root


@pytest.mark.slow
def test_command_line_blur_builds_no_network_and_its_records_name_the_method(photos, tmp_path, tiny_weights,
                                                                            monkeypatch, capsys):
    from falco.cli import main
    from falco.evaluate.data import load_evaluation_set
    from falco.pipeline import FalcoPipeline
    monkeypatch.setattr(FalcoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("networks loaded"))
    monkeypatch.setattr("falco.models.networks.load_networks", lambda *a, **k: pytest.fail("networks built"))
    out, weights = tmp_path / "out", str(tiny_weights)
    with pytest.raises(SystemExit) as usage:   # m is FALCO's: refused before anything loads
        main(["anonymize", str(photos), str(out), "--method", "blur", "--margin", "0.5", "--weights", weights])
    assert usage.value.code == 2 and "has none" in capsys.readouterr().err

    run = ["anonymize", str(photos), str(out), "--method", "blur", "--weights", weights, "--no-progress"]
    assert main(run) == 3   # the blank photo has no face
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == "blur"
    record = json.loads((out / "astronaut.png.json").read_text())
    assert record["status"] == "ok" and record["method"] == "blur" and record["outputs"] == ["astronaut.png"]
    assert record["settings"]["method"] == {"name": "blur", "blur_sigma": BaselineConfig().blur_sigma}
    assert record["settings"]["margins"] == [None] and record["faces"] == [{"face": 1, "margin": None}]
    assert not (out / "astronaut.png.latents.safetensors").exists()   # a baseline has no W+ codes
    with Image.open(out / "astronaut.png") as image, Image.open(photos / "astronaut.png") as source:
        assert image.size == source.size
    failed = json.loads((out / "blank.png.json").read_text())
    assert failed["status"] == "failed" and failed["method"] == "blur"
    # The evaluation finds the images and takes them as having no m.
    assert load_evaluation_set(photos, out).margins == [None]

    assert main(run) == 3   # done: skipped, as FALCO's runs are
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 2
    assert main([*run[:4], "mask", *run[5:]]) == 3   # another method: done again
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["redone"] == 2 and summary["done"] == 1
    assert json.loads((out / "astronaut.png.json").read_text())["method"] == "mask"


class Spy:
    """A pipeline whose ``paired`` results are kept for the test."""

    def __init__(self, pipeline):
        self.pipeline, self.source, self.bank, self.results = pipeline, pipeline.source, pipeline.bank, []

    def paired(self, *args, **kwargs):
        self.results.append(self.pipeline.paired(*args, **kwargs))
        return self.results[-1]


@pytest.mark.slow
def test_nearest_fake_is_falcos_start_pasted_back_and_recorded_as_such(tiny_pipeline, photos, tmp_path, face_region):
    from falco.photo_folders import anonymize_tree
    spy, out = Spy(tiny_pipeline), tmp_path / "out"
    summary = anonymize_tree(NearestFake(spy), photos, out, margins=NO_MARGIN, optim=OptimConfig(steps=3),
                             progress=False)
    assert summary.done == 1 and summary.failed == 1
    face = spy.results[0].faces[0]
    start, stop = OptimConfig().trained_rows
    fake_w = tiny_pipeline.bank.w[face.fake_index].to(face.wplus)
    assert torch.equal(face.wplus[start:stop], fake_w.expand(stop - start, -1))   # the fake's w, not optimised
    assert torch.equal(face.wplus[:start], face.wplus_inversion[:start])
    assert torch.equal(face.wplus[stop:], face.wplus_inversion[stop:])

    record = json.loads((out / "astronaut.png.json").read_text())
    assert record["method"] == "nearest-fake" == record["params"]["method"] == record["settings"]["method"]["name"]
    assert record["outputs"] == ["astronaut.png"] and record["settings"]["margins"] == [None]
    assert [(f["face"], f["margin"], f["fake_index"]) for f in record["faces"]] == [(1, None, face.fake_index)]
    assert -1 <= record["faces"][0]["identity_cosine"] <= 1
    with Image.open(out / "astronaut.png") as image, Image.open(photos / "astronaut.png") as source:
        pasted, original = np.asarray(image.convert("RGB")), np.asarray(source.convert("RGB"))
    outside, inside = face_region[1] == 0, face_region[1] == 255
    assert (pasted[outside] == original[outside]).all()   # FALCO's paste mask: the rest keeps its bytes
    assert (pasted[inside] != original[inside]).any()


def test_a_baselines_dataset_row_has_no_m_and_no_judgement(tmp_path):
    import io

    from falco.baselines import BaselineResult
    from falco.config import CliConfig
    from falco.datasets_io import WORK_FOLDER, row_outputs
    from falco.photo_folders import run_settings, write_result
    settings = run_settings(NO_MARGIN, OptimConfig(), 1, "weights", method={"name": "mask", "mask_fill": list(FILL)})
    result = BaselineResult([Image.new("RGB", (8, 8), FILL)], [{"face": 1, "margin": None}], {"method": "mask"})
    entry = write_result(result, f"{WORK_FOLDER}/00000000.png", tmp_path, NO_MARGIN, CliConfig(), settings, 0.1)
    assert entry["method"] == "mask" and entry["outputs"] == [f"{WORK_FOLDER}/00000000.png"]
    [row] = row_outputs(0, tmp_path, NO_MARGIN, settings, ".png")
    assert row["margin"] is None and row["error"] is None
    assert row["identity_cosine"] == row["recognizer_distance"] == row["fake_index"] == [None]   # one face, unjudged
    with Image.open(io.BytesIO(row["anonymized"]["bytes"])) as image:
        assert image.getpixel((0, 0)) == FILL
