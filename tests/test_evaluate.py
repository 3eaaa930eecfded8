"""python -m falco.evaluate: the measures on hand-made arrays, the three kinds of input, the report, and whole runs
(anonymize, then evaluate) on random weights, whose figures mean nothing but whose plumbing is real."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from falco.config import PAPER_CELEBAHQ, EvaluationConfig
from falco.errors import FalcoError
from falco.evaluate.__main__ import main
from falco.evaluate.data import Labels, combine_sets, load_evaluation_set, summarise_settings
from falco.evaluate.metrics import (
    IDENTITY_JUDGES,
    chance_rate,
    landmark_error,
    nearest_match_rate,
    probe_accuracy,
    split_held_out,
)
from falco.evaluate.report import format_table, random_warning, table_rows, write_html, write_metrics

ROOT = Path(__file__).resolve().parents[1]


# --- The measures, by hand ----------------------------------------------------------------------------------------
def test_nearest_match_rate_by_hand():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    probes = np.array([[0.9, 0.1], [0.2, 3.0], [-5.0, 0.5], [0.2, 0.25]])   # nearest rows: 0, 1, 2, 1
    assert nearest_match_rate(gallery, ["a", "b", "c"], probes, ["a", "b", "c", "b"]) == 100.0
    assert nearest_match_rate(gallery, ["a", "b", "c"], probes, ["a", "x", "c", "x"]) == 50.0
    # Identity labels: the nearest original is another photo of the same person.
    assert nearest_match_rate(gallery, ["p", "p", "q"], probes, ["p", "p", "p", "q"]) == 50.0
    # Cosine looks at directions only, Euclidean (dlib's) at positions: [9, 0] lies along [1, 0], near [10, 1].
    far = np.array([[1.0, 0.0], [10.0, 1.0]])
    assert nearest_match_rate(far, ["a", "b"], np.array([[9.0, 0.0]]), ["a"]) == 100.0
    assert nearest_match_rate(far, ["a", "b"], np.array([[9.0, 0.0]]), ["a"], euclidean=True) == 0.0


def test_chance_rate_is_the_share_of_the_gallery_with_the_probes_label():
    assert chance_rate(["a", "b", "c", "d"], ["a", "b"]) == 25.0            # sources: 1 / originals
    # Identity labels: p has 3 photos of 4, q one; probes of p hit 3 in 4 at random, of q 1 in 4.
    assert chance_rate(["p", "p", "p", "q"], ["p", "q"]) == pytest.approx(50.0)
    assert math.isnan(chance_rate([], ["a"]))


def test_landmark_error_is_normalised_by_the_outer_eye_corners():
    reference = np.zeros((68, 2))
    reference[45] = [10.0, 0.0]                   # inter-ocular distance 10
    assert landmark_error(reference + [3.0, 4.0], reference) == pytest.approx(0.5)   # every point moved by 5
    moved = reference.copy()
    moved[0] += [0.0, 68.0]                       # one point moved by 68: mean 1, over 10
    assert landmark_error(moved, reference) == pytest.approx(0.1)


def test_landmarks_follow_an_anonymized_image_of_another_size():
    from falco.evaluate.metrics import _scaled
    points = np.array([[0.0, 0.0], [99.0, 49.0], [10.0, 20.0]])
    same = _scaled(points, (100, 50), (100, 50))
    assert same is points
    # Pixel centres on integers: the 100-px image's pixel 0 covers pixels 0 and 1 of the 200-px one, centre 0.5.
    assert np.array_equal(_scaled(points, (100, 50), (200, 100)), [[0.5, 0.5], [198.5, 98.5], [20.5, 40.5]])


def test_held_out_split_is_a_seeded_partition():
    keys = [f"k{i}" for i in range(10)]
    train, held_out = split_held_out(keys, 0.2, seed=0)
    assert train | held_out == set(keys) and not train & held_out and len(held_out) == 2
    assert split_held_out(list(reversed(keys)), 0.2, seed=0) == (train, held_out)
    assert split_held_out(["a", "b"], 0.01, seed=0)[1]          # at least one held out
    assert split_held_out(["a", "b"], 0.99, seed=0)[0]          # at least one to train on
    assert split_held_out(["a"], 0.5, seed=0) == ({"a"}, set())


@pytest.mark.slow
def test_probe_accuracy_by_hand():
    train_x = np.array([[0.0], [1.0], [2.0], [3.0]])
    # Attribute 0 separates at 1.5 (symmetric data: the fitted boundary sits there); attribute 1 is always 1.
    train_y = np.array([[0, 1], [0, 1], [1, 1], [1, 1]])
    tests = {"far": (np.array([[-10.0], [10.0]]), np.array([[0, 1], [1, 0]])),
             "wrong": (np.array([[-10.0], [10.0]]), np.array([[1, 1], [0, 1]]))}
    result = probe_accuracy(train_x, train_y, tests, ["edge", "constant"], max_iter=1000)
    assert result["far"]["per_attribute"] == {"edge": 1.0, "constant": 0.5}
    assert result["far"]["mean"] == 0.75 and result["far"]["images"] == 2
    assert result["wrong"]["per_attribute"] == {"edge": 0.0, "constant": 1.0}


# --- Inputs -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def face(astronaut) -> Image.Image:
    """The test photo at 256 px: dlib finds its face (and its mirror's) in a few tens of ms."""
    photo = Image.open(astronaut).convert("RGB")
    return photo.resize((256, 256), Image.Resampling.LANCZOS)


def make_tree(root: Path, images: dict[str, Image.Image]) -> Path:
    for relative, image in images.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / relative)
    return root


def test_two_folders_pair_by_relative_path(tmp_path, face):
    originals = make_tree(tmp_path / "o", {"a/x.png": face, "y.png": ImageOps.mirror(face), "z.png": face})
    anonymized = make_tree(tmp_path / "n", {"a/x.png": ImageOps.mirror(face), "y.png": face})
    data = load_evaluation_set(originals, anonymized, margin=0.5)
    assert data.kind == "folders" and data.skipped == {"missing": 1} and data.margins == [0.5]
    assert [o.key for o in data.originals] == ["a/x.png", "y.png", "z.png"]
    assert [a.key for a in data.anonymized] == ["a/x.png", "y.png"]
    assert np.array_equal(np.asarray(data.anonymized[0].load()), np.asarray(ImageOps.mirror(face)))
    assert [o.key for o in data.limited(1).originals] == ["a/x.png"] and len(data.limited(1).anonymized) == 1
    with pytest.raises(FalcoError, match="no anonymized image"):
        load_evaluation_set(originals, make_tree(tmp_path / "empty", {"other.png": face}))


def test_cli_output_folder_gives_each_m(tmp_path, face):
    """A ``falco anonymize`` output folder, laid out by falco.photo_folders: a record per photo, an image per m."""
    from falco.names import output_paths
    originals = make_tree(tmp_path / "o", {"a/x.png": face, "y.png": face, "z.png": face})
    out = tmp_path / "out"
    margins = [0.0, 0.5]
    images, _, record = output_paths(out, "a/x.png", margins)
    make_tree(out, {p.relative_to(out).as_posix(): face for p in images})
    record.write_text(json.dumps({"status": "ok", "settings": {"margins": margins}}))
    _, _, failed = output_paths(out, "y.png", margins)
    failed.write_text(json.dumps({"status": "failed", "error": "no face", "settings": {"margins": margins}}))
    data = load_evaluation_set(originals, out)
    assert data.kind == "cli output" and data.margins == margins
    assert [(a.key, a.margin) for a in data.anonymized] == [("a/x.png", 0.0), ("a/x.png", 0.5)]
    assert data.skipped == {"failed": 1, "missing": 1}


def test_folder_labels_from_a_csv(tmp_path, face):
    originals = make_tree(tmp_path / "o", {"x.png": face, "y.png": face})
    anonymized = make_tree(tmp_path / "n", {"x.png": face, "y.png": face})
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "person", "Smiling", "Male", "notes"])
        writer.writerows([["x.png", "ann", "1", "-1", "a"], ["y.png", "bob", "-1", "1", "b"]])
    data = load_evaluation_set(originals, anonymized, Labels(identity_column="person", csv=labels))
    assert data.attribute_names == ("Smiling", "Male")           # CelebA's names, found; "notes" is not one
    assert [(o.identity, o.attributes) for o in data.originals] == [("ann", (1, 0)), ("bob", (0, 1))]
    chosen = load_evaluation_set(originals, anonymized, Labels(attribute_columns=("Male",), csv=labels))
    assert chosen.attribute_names == ("Male",) and chosen.originals[1].attributes == (1,)
    with pytest.raises(FalcoError, match="No attribute column Bald"):
        load_evaluation_set(originals, anonymized, Labels(attribute_columns=("Bald",), csv=labels))


def anonymized_dataset(face: Image.Image, folder: Path) -> Path:
    """The anonymize-dataset schema: a row per input row and per m, original columns unchanged; one row failed."""
    import datasets
    mirror = ImageOps.mirror(face)
    rows = {"image": [face, face, mirror, mirror], "label": [7, 7, 9, 9], "Smiling": [1, 1, -1, -1],
            "anonymized": [mirror, face, None, mirror], "margin": [0.0, 0.9, 0.0, 0.9],
            "error": [None, None, "no face", None]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"),
                                  "Smiling": datasets.Value("int64"), "anonymized": datasets.Image(),
                                  "margin": datasets.Value("float32"), "error": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    return folder


def test_dataset_rows_per_m_share_their_original(tmp_path, face):
    data = load_evaluation_set(anonymized_dataset(face, tmp_path / "ds"), labels=Labels(identity_column="label"))
    assert data.kind == "dataset" and data.margins == [0.0, 0.9] and data.skipped == {"failed": 1}
    assert len(data.originals) == 2 and data.attribute_names == ("Smiling",)
    assert sorted((o.identity, o.attributes) for o in data.originals) == [("7", (1,)), ("9", (0,))]
    keys = {o.identity: o.key for o in data.originals}
    assert [(a.key, a.margin) for a in data.anonymized] == [(keys["7"], 0.0), (keys["7"], 0.9), (keys["9"], 0.9)]
    assert np.array_equal(np.asarray(data.anonymized[0].load()), np.asarray(ImageOps.mirror(face)))
    with pytest.raises(FalcoError, match="no column photo"):
        load_evaluation_set(tmp_path / "ds", image_column="photo")
    (tmp_path / "not-a-dataset").mkdir()
    with pytest.raises(FalcoError, match="Cannot open the dataset not-a-dataset"):
        load_evaluation_set(tmp_path / "not-a-dataset")


# --- The report ---------------------------------------------------------------------------------------------------
def figures_for(margins) -> dict:
    """metrics.json's figures, made up: what the report lays out."""
    return {"input": {"kind": "folders", "aligned": False, "originals": 2, "anonymized": 2 * len(margins),
                      "skipped": {"missing": 1}, "no_face_in_original": 0, "identity_labels": False,
                      "attributes": ["Smiling"], "probe_held_out": 1},
            "original": {"images": 2, "detection_percent": {"dlib": 100.0, "mtcnn": 50.0}, "attribute_accuracy": 0.9,
                         "attribute_accuracy_per_attribute": {"Smiling": 0.9}},
            "margins": [{"margin": m, "images": 2, "fid": 12.345 + i, "detection_percent": {"dlib": 50.0, "mtcnn": 0.0},
                         "reid_percent": {judge: 10.0 * i for judge in IDENTITY_JUDGES}, "attribute_accuracy": 0.75,
                         "attribute_accuracy_per_attribute": {"Smiling": 0.75}, "landmark_error": 0.0625,
                         "landmark_faces": 2, "reid_chance_percent": 50.0} for i, m in enumerate(margins)]}


def test_records_settings_are_summarised_per_name_without_server_paths():
    falco = {"margins": [0.0, 0.9], "optim": {"steps": 100, "lambda_id": 10.0, "lambda_attr": 0.1}, "fake_k": 1,
             "weights": "/srv/private/weights"}
    baseline = {**falco, "margins": [None], "method": {"name": "blur", "blur_sigma": 0.04}}
    assert summarise_settings([falco, {**falco, "optim": {**falco["optim"], "steps": 50}}]) == {
        "method": ["falco"], "margins": [[0.0, 0.9]], "steps": [100, 50], "lambda_id": [10.0], "lambda_attr": [0.1],
        "fake_k": [1], "weights": ["local folder weights"]}
    # A baseline's records keep the optimisation's defaults, which it never used: its own settings instead.
    assert summarise_settings([baseline]) == {"method": ["blur"], "weights": ["local folder weights"],
                                              "blur_sigma": [0.04]}


def test_compared_sets_become_one_set_with_a_row_per_method_and_m(tmp_path, face):
    from falco.names import output_paths
    originals = make_tree(tmp_path / "o", {"x.png": face, "y.png": ImageOps.mirror(face)})
    blurred = make_tree(tmp_path / "blur", {"x.png": face})               # a plain folder: no m, y.png missing
    out = tmp_path / "falco"
    for name in ("x.png", "y.png"):
        images, _, record = output_paths(out, name, [0.9, 0.0])
        make_tree(out, {p.relative_to(out).as_posix(): face for p in images})
        record.write_text(json.dumps({"status": "ok", "settings": {"margins": [0.9, 0.0], "optim": {"steps": 7}}}))
    data = combine_sets({"blur": load_evaluation_set(originals, blurred),
                         "falco": load_evaluation_set(originals, out)})
    assert data.variants == [("blur", None), ("falco", 0.0), ("falco", 0.9)]
    assert [o.key for o in data.originals] == ["x.png", "y.png"] and len(data.anonymized) == 1 + 4
    assert data.skipped == {"blur: missing": 1}
    assert data.settings == {"falco": {"method": ["falco"], "margins": [[0.9, 0.0]], "steps": [7]}}
    elsewhere = [make_tree(tmp_path / name, {"z.png": face}) for name in ("other", "other-anonymized")]
    with pytest.raises(FalcoError, match="none of the originals"):
        combine_sets({"a": data, "b": load_evaluation_set(*elsewhere)})


def test_table_lays_out_ours_then_the_papers():
    headings, rows = table_rows(figures_for([0.0, 0.9]))
    assert [row[0] for row in rows] == ["Original", "m = 0", "m = 0.9", "paper m = 0", "paper m = 0.9"]
    assert len({len(row) for row in [headings, *rows]}) == 1
    fid, casia, vgg = headings.index("FID"), headings.index("Re-ID CASIA"), headings.index("Re-ID VGG")
    assert rows[2][fid] == "13.35" and rows[2][casia] == "10.00 %"
    paper = {ref.margin: ref for ref in PAPER_CELEBAHQ}
    assert rows[3][fid] == f"{paper[0.0].fid:.2f}" and rows[3][vgg] == f"{paper[0.0].reid_vgg:.2f} %"
    assert rows[4][casia] == f"{paper[0.9].reid_casia:.2f} %"
    assert rows[3][headings.index("Attr. acc.")] == f"{paper[0.0].attribute_accuracy:.4f}"
    # The paper's m = 0.9 row: MTCNN finds every face, the attributes are kept at 0.83.
    assert rows[4][headings.index("Det. MTCNN")] == "100.00 %" and rows[4][headings.index("Attr. acc.")] == "0.8300"
    text = format_table(figures_for([None]))
    assert "FID (64-d)" in format_table({**figures_for([0.0]), "input": {"fid_features": 64}})
    assert "m = ?" in text and "29.93" in text
    assert len(text.splitlines()) == 2 + 2 + 1 + len(PAPER_CELEBAHQ) + 3     # notes: chance, FID's bias, ArcFace
    assert "Re-ID at chance: 50.00 % (a judge blind to faces, picking one of 2 originals" in text
    assert "FID on 2 originals and 2 anonymized images a row is biased upwards" in text
    # A FID of noise is no 0.00: its digits show.
    tiny = figures_for([0.0])
    tiny["margins"][0]["fid"] = 4.216e-6
    assert table_rows(tiny)[1][1][1] == "4.2e-06"


def test_compared_methods_get_their_own_rows_and_the_reference_fid_its_column():
    figures = figures_for([None, 0.0, 0.9])
    for row, method in zip(figures["margins"], ["blur", "falco", "falco"]):
        row.update(method=method, fid_reference=2 * row["fid"])
    headings, rows = table_rows(figures)
    assert [row[0] for row in rows[:4]] == ["Original", "blur", "falco m = 0", "falco m = 0.9"]
    assert rows[2][headings.index("FID (ref.)")] == "26.69" and rows[0][headings.index("FID (ref.)")] == "-"


@pytest.mark.slow
def test_random_judges_are_said_loudly_everywhere(tmp_path, face):
    figures = figures_for([0.0])
    real = {"origin": "https://example/real.pt", "file": "real.pt", "sha256": "ab" * 32}
    figures["judges"] = {"facenet_casia": {**real, "origin": "random"}, "fid_inception": {**real, "origin": "random"},
                         "facenet_vgg": real}
    warning = random_warning(figures)
    assert "RANDOM JUDGES" in warning and "facenet_casia, fid_inception" in warning
    assert "Re-ID CASIA, FID measure nothing" in warning and "facenet_vgg" not in warning
    text = format_table(figures)
    assert text.splitlines()[1] == warning and text.splitlines()[-2] == warning        # above and below
    headings = table_rows(figures)[0]
    assert "Re-ID CASIA (RANDOM)" in headings and "FID (RANDOM)" in headings and "Re-ID VGG" in headings
    assert json.loads(write_metrics(figures, tmp_path).read_text())["random_judges"] == ["facenet_casia",
                                                                                        "fid_inception"]
    data = load_evaluation_set(make_tree(tmp_path / "o", {"x.png": face}), make_tree(tmp_path / "n", {"x.png": face}))
    page = write_html(figures, data, tmp_path, EvaluationConfig(examples=1)).read_text()
    assert page.count("<div class='random' role='alert'>") == 2 and "RANDOM NOISE" in page
    figures["judges"] = {"facenet_vgg": real}
    assert random_warning(figures) is None and "RANDOM" not in format_table(figures)
    assert json.loads(write_metrics(figures, tmp_path).read_text())["random_judges"] == []


@pytest.mark.slow
def test_judges_provenance_says_random_or_names_the_file_and_its_hash(tiny_weights_with_judges):
    from dataclasses import replace

    from falco.evaluate.judges import RANDOM, fetch_evaluation_weights, weight_set_provenance
    from falco.weights import fetch_weights
    from falco.weights.manifest import sha256_file
    from falco.weights.official import Source
    paths = fetch_evaluation_weights(tiny_weights_with_judges, progress=False)
    provenance = paths.provenance()
    assert set(provenance) == {"facenet_casia", "facenet_vgg", "pnet", "rnet", "onet", "fid_inception", "probe"}
    assert all(entry["origin"] == RANDOM for entry in provenance.values())
    assert provenance["pnet"]["sha256"] == sha256_file(paths.pnet) and provenance["pnet"]["file"] == "pnet.pt"
    # A public file: where it came from, and the pinned hash it was verified against.
    served = replace(paths, origins={"pnet": Source("url", "https://example/pnet.pt", sha256="0" * 64)})
    assert served.provenance()["pnet"] == {**provenance["pnet"], "origin": "https://example/pnet.pt",
                                           "sha256": "0" * 64}
    names = ("arcface", "dlib_landmarks", "dlib_recognition")
    own = weight_set_provenance(fetch_weights(str(tiny_weights_with_judges), names=names, progress=False), names)
    # A random set's ArcFace is noise; its dlib files are dlib's real models.
    assert own["arcface"]["origin"] == RANDOM and own["dlib_recognition"]["origin"].startswith("local folder")


@pytest.mark.slow
def test_plots_draw_what_has_data_without_offsets_or_titles_as_captions():
    from matplotlib.figure import Figure

    from falco.evaluate.plots import _plain_axis_from_zero, plots
    figures = figures_for([0.0, 0.9])
    titles = [title for title, _, _ in plots(figures)]
    assert titles == ["Re-identification rate", "FID", "Attribute preservation", "Landmark error",
                      "Face detection rate", "Privacy against utility"]
    for row in figures["margins"]:
        row.update(attribute_accuracy=None, landmark_error=None)
    made = plots(figures)
    assert [title for title, _, _ in made] == ["Re-identification rate", "FID", "Face detection rate"]
    assert all(len(caption) > len(title) and not caption.startswith(title) for title, caption, _ in made)
    ax = Figure().add_subplot()
    ax.plot([0, 1], [4.216e-6, 4.2161e-6])
    _plain_axis_from_zero(ax)
    ax.figure.canvas.draw()
    assert ax.yaxis.get_offset_text().get_text() == "" and ax.get_ylim()[0] == 0


def test_metrics_json_and_a_self_contained_html(tmp_path, face):
    originals = make_tree(tmp_path / "o", {"x.png": face, "y.png": ImageOps.mirror(face)})
    anonymized = make_tree(tmp_path / "n", {"x.png": ImageOps.mirror(face), "y.png": face})
    data = load_evaluation_set(originals, anonymized, margin=0.0)
    figures = figures_for([0.0])
    stored = json.loads(write_metrics(figures, tmp_path).read_text())
    assert stored["margins"] == figures["margins"] and stored["paper_celebahq"][0]["fid"] == PAPER_CELEBAHQ[0].fid
    page = write_html(figures, data, tmp_path, EvaluationConfig(examples=1)).read_text()
    sources = [part.split("'", 1)[0] for part in page.split("src='")[1:]]
    assert len(sources) == 6 + 2                                  # six plots, one original and its m
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert "http" not in page and "12.35" in page and "29.93" in page
    assert not list(tmp_path.glob("*.tmp"))


# --- Evaluations on random weights --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluator(tiny_weights_with_judges):
    from falco.evaluate.metrics import Evaluator
    # 64 Inception features: FID's arithmetic is the same, its 2048-d eigenvalues take ~20 s a margin on this CPU.
    return Evaluator.from_pretrained(str(tiny_weights_with_judges), "cpu", EvaluationConfig(fid_features=64),
                                     progress=False)


@pytest.mark.slow
def test_identical_folders_by_hand(tmp_path, face, evaluator):
    """Anonymized images equal to their originals: every judge's nearest original is the image's own source
    (cosine 1), the landmarks match exactly, FID is 0, the probe does as well on them as on the originals; a photo
    with no face (a blank) is found by dlib in neither."""
    blank = Image.new("RGB", (256, 256), (128, 128, 128))
    images = {"a/x.png": face, "y.png": ImageOps.mirror(face), "z.png": face.rotate(8), "blank.png": blank}
    originals, anonymized = make_tree(tmp_path / "o", images), make_tree(tmp_path / "n", images)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,Smiling,Young\na/x.png,1,1\ny.png,-1,1\nz.png,1,-1\nblank.png,-1,-1\n")
    data = load_evaluation_set(originals, anonymized, Labels(csv=labels), margin=0.0)
    figures = evaluator.evaluate(data, progress=False)
    (row,) = figures["margins"]
    assert figures["input"]["no_face_in_original"] == 1 and row["images"] == 4
    assert row["detection_percent"]["dlib"] == figures["original"]["detection_percent"]["dlib"] == 75.0
    assert row["detection_percent"]["mtcnn"] == figures["original"]["detection_percent"]["mtcnn"]
    assert row["reid_percent"] == {judge: 100.0 for judge in IDENTITY_JUDGES}
    assert row["landmark_error"] == 0.0 and row["landmark_faces"] == 3
    assert row["fid"] == pytest.approx(0.0, abs=1e-3)
    assert figures["input"]["probe_held_out"] == 1                # three faces: one held out of the probe's training
    assert row["attribute_accuracy"] == figures["original"]["attribute_accuracy"]


@pytest.mark.slow
def test_aligned_crops_are_judged_whole(tmp_path, face, evaluator):
    """--aligned: a photo whose face dlib misses still gets FaceNet's and ArcFace's verdicts (not dlib's)."""
    blank = Image.new("RGB", (256, 256), (90, 90, 90))
    images = {"x.png": face, "blank.png": blank}
    data = load_evaluation_set(make_tree(tmp_path / "o", images), make_tree(tmp_path / "n", images))
    figures = evaluator.evaluate(data, aligned=True, progress=False)
    (row,) = figures["margins"]
    assert figures["input"]["no_face_in_original"] == 0
    assert row["reid_percent"] == {judge: 100.0 for judge in IDENTITY_JUDGES}
    assert row["fid"] == pytest.approx(0.0, abs=1e-3) and row["landmark_faces"] == 1


def test_usage_errors_exit_2_and_bad_input_exits_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        main([str(tmp_path), str(tmp_path), "--limit", "0"])
    assert usage.value.code == 2
    for wrong, message in ((["--compare", "blur"], "NAME=PATH pairs"), (["--compare", "a=x", "a=y"], "names a twice"),
                           ([str(tmp_path), str(tmp_path), "--compare", "a=x"], "give ORIGINALS alone"),
                           ([], "ORIGINALS")):
        with pytest.raises(SystemExit) as usage:
            main(wrong)
        assert usage.value.code == 2 and message in capsys.readouterr().err
    out = tmp_path / "report"
    assert main([str(tmp_path / "nowhere"), str(tmp_path), "--out", str(out), "--no-progress"]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert not out.exists()                                       # nothing written for a run that did not start


@pytest.mark.slow
def test_anonymize_then_evaluate_end_to_end(tmp_path, face, tiny_weights_with_judges, capsys):
    """The whole run as a user types it: falco anonymize at two m (its command line's main, in this process, as
    test_cli runs it; test_datasets starts `python -m falco.cli`), then `python -m falco.evaluate` on its output
    folder."""
    from falco import cli
    photos = make_tree(tmp_path / "photos", {"a/x.png": face, "y.png": ImageOps.mirror(face)})
    out, report = tmp_path / "anonymized", tmp_path / "report"
    code = cli.main(["anonymize", str(photos), str(out), "--weights", str(tiny_weights_with_judges), "--device", "cpu",
                     "--steps", "1", "--margin", "0", "0.5", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    run = subprocess.run([sys.executable, "-m", "falco.evaluate", str(photos), str(out), "--weights",
                          str(tiny_weights_with_judges), "--device", "cpu", "--out", str(report),
                          "--fid-features", "64", "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    figures = json.loads((report / "metrics.json").read_text())
    assert figures["input"]["kind"] == "cli output" and figures["input"]["originals"] == 2
    assert figures["input"]["no_face_in_original"] == 0
    assert [row["margin"] for row in figures["margins"]] == [0.0, 0.5]
    assert all(row["images"] == 2 for row in figures["margins"])
    for row in figures["margins"]:
        assert set(row["reid_percent"]) == set(IDENTITY_JUDGES)
        assert all(value in (0.0, 50.0, 100.0) for value in row["reid_percent"].values())   # two faces
        assert row["fid"] is not None and math.isfinite(row["fid"])
    assert "paper m = 0.9" in run.stdout and "m = 0.5" in run.stdout
    page = (report / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 2 * 3
    # Random judges: said before the measuring and around the table; the records' settings are in the report.
    assert "WARNING: RANDOM JUDGES" in run.stderr and run.stdout.count("WARNING: RANDOM JUDGES") == 2
    assert "fid_inception" in figures["random_judges"] and "dlib_recognition" not in figures["random_judges"]
    assert figures["settings"] == [{"set": None, "method": ["falco"], "margins": [[0.0, 0.5]], "steps": [1],
                                    "lambda_id": [10.0], "lambda_attr": [0.1], "fake_k": [1],
                                    "weights": [f"local folder {tiny_weights_with_judges.name}"]}]
    assert "steps 1; lambda_id 10" in page and "class='random'" in page


@pytest.mark.slow
def test_compared_sets_are_measured_in_one_pass_with_a_reference_fid(tmp_path, face, evaluator):
    """Two methods of the same originals: a row per method and m; the reference set being the originals
    themselves, each row's reference FID is its FID."""
    from falco.evaluate.data import reference_images
    images = {"x.png": face, "y.png": ImageOps.mirror(face)}
    originals = make_tree(tmp_path / "o", images)
    same = load_evaluation_set(originals, make_tree(tmp_path / "same", images), margin=0.0)
    swapped = load_evaluation_set(originals, make_tree(tmp_path / "swap", {"x.png": images["y.png"],
                                                                             "y.png": images["x.png"]}))
    figures = evaluator.evaluate(combine_sets({"copy": same, "swap": swapped}), progress=False,
                                 fid_reference=reference_images(originals))
    copy, swap = figures["margins"]
    assert (copy["method"], copy["margin"], swap["method"], swap["margin"]) == ("copy", 0.0, "swap", None)
    assert copy["reid_percent"] == {judge: 100.0 for judge in IDENTITY_JUDGES}   # each image its own original
    assert copy["images"] == swap["images"] == 2 and set(swap["reid_percent"]) == set(IDENTITY_JUDGES)
    assert copy["reid_chance_percent"] == swap["reid_chance_percent"] == 50.0
    assert figures["input"]["fid_reference_images"] == 2
    assert copy["fid_reference"] == pytest.approx(copy["fid"], rel=1e-4, abs=1e-6)
    assert swap["fid_reference"] == pytest.approx(swap["fid"], rel=1e-4, abs=1e-6)
    assert set(figures["judges"]) >= {"facenet_casia", "fid_inception", "arcface", "dlib_recognition"}


@pytest.mark.slow
def test_dataset_evaluation_with_identity_labels(tmp_path, face, evaluator):
    """A dataset: identity labels decide re-identification; each m gets its rows; the failed row is left out."""
    data = load_evaluation_set(anonymized_dataset(face, tmp_path / "ds"), labels=Labels(identity_column="label"))
    figures = evaluator.evaluate(data, progress=False)
    assert [(row["margin"], row["images"]) for row in figures["margins"]] == [(0.0, 1), (0.9, 2)]
    # At m = 0.9 each anonymized image equals its own original: re-identified by every judge.
    assert figures["margins"][1]["reid_percent"] == {judge: 100.0 for judge in IDENTITY_JUDGES}
    assert figures["input"]["skipped"] == {"failed": 1} and figures["input"]["identity_labels"]
