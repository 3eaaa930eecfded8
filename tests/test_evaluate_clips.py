"""python -m falco.evaluate --clip: the clip measures by hand, the inputs (m from records and names), and one run on
tiny synthetic clips and random judges whose "anonymized" clips are made so that the figures are known."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from falco.config import EvaluationConfig
from falco.errors import FalcoError, NoFaceError
from falco.evaluate.__main__ import main
from falco.evaluate.clip_inputs import load_clip_set, margin_of
from falco.evaluate.clip_report import format_table, table_rows, track_rows
from falco.evaluate.clips import (
    ClipEvaluator,
    Identity,
    box_change,
    box_difference,
    consistency,
    face_box,
    reidentified,
)
from falco.evaluate.metrics import IDENTITY_JUDGES
from falco.video.synthetic import pan_zoom_frames, write_clip

FRAMES, SIZE = 4, (192, 192)   # 160 px frames: dlib finds the face in one frame of four


# --- The measures, by hand ----------------------------------------------------------------------------------------
def test_consistency_is_the_mean_pairwise_cosine_and_its_worst_frame():
    vectors = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]])   # cosines: 1 (frames 10, 11), 0 and 0 (frame 12)
    found = consistency(vectors, [10, 11, 12])
    assert found["mean"] == pytest.approx(1 / 3)
    assert (found["worst"], found["worst_frame"]) == (0.0, 12)  # least like the others
    assert consistency(vectors[:1], [10]) is None


def test_reidentified_needs_the_nearest_person_and_their_own_frames_nearness():
    ann = Identity.of(np.array([[1.0, 0.0], [0.6, 0.8]]), euclidean=False)   # own frames' lowest cosine: cos 26.6 deg
    bob = Identity.of(np.array([[-1.0, 0.1]]), euclidean=False)
    probes = np.array([[0.6, 0.8],      # one of Ann's frames
                       [0.0, 1.0],      # nearer Ann than Bob, but less like her than her own frames are
                       [-1.0, 0.1],     # Bob's one frame
                       [-1.0, 0.0]])    # nearest Bob, but one frame of him sets the bar at his own: cosine 1
    assert reidentified(probes, 0, [ann, bob]).tolist() == [True, False, False, False]
    assert reidentified(probes, 1, [ann, bob]).tolist() == [False, False, True, False]
    # dlib's distances: the bar is the farthest own frame from the centre.
    near = Identity.of(np.array([[0.0, 0.0], [2.0, 0.0]]), euclidean=True)      # centre [1, 0], bar 1
    far = Identity.of(np.array([[10.0, 0.0]]), euclidean=True)
    assert near.bar == 1.0
    assert reidentified(np.array([[1.5, 0.0], [1.0, 1.5], [9.0, 0.0]]), 0, [near, far]).tolist() == [True, False, False]


def test_face_box_and_the_difference_inside_it():
    landmarks = np.array([[-5.2, 3.5], [20.1, 8.0], [7.0, 40.0]])
    assert face_box(landmarks, 30, 30) == (0, 3, 21, 29)          # inside the frame, inclusive bounds
    a, b = np.zeros((30, 30, 3), np.uint8), np.zeros((30, 30, 3), np.uint8)
    b[3:30, 0:22] = 10                                            # the box alone: 10 levels
    b[0, 29] = 255                                                # outside the box: not counted
    assert box_difference(a, b, (0, 3, 21, 29)) == 10.0
    assert box_difference(b, a, (0, 0, 29, 29)) == pytest.approx((27 * 22 * 10 * 3 + 255 * 3) / (30 * 30 * 3))


def test_the_change_of_a_face_box_ignores_fine_noise():
    face = np.full((32, 32, 3), 100, np.uint8)
    noisy = face.copy()
    noisy[0::2, 0::2] += 10                                       # +-10 levels in every 2x2 cell: a codec's fine noise
    noisy[1::2, 1::2] -= 10
    box = (0, 0, 31, 31)
    assert box_difference(face, noisy, box) == 5.0 and box_change(face, noisy, box, 16) == 0.0
    other = face.copy()
    other[:16] = 140                                              # a face of its own: half the box 40 levels brighter
    assert box_change(face, other, box, 16) == 20.0


# --- Inputs -------------------------------------------------------------------------------------------------------
def test_m_from_the_command_lines_record_the_apps_record_or_the_name(tmp_path):
    cli = tmp_path / "cli"
    cli.mkdir()
    (cli / "clip.mp4.json").write_text(json.dumps({"status": "ok", "params": {"margins": [0.0, 0.5]},
                                                   "outputs": ["clip.m0.mp4", "clip.m0.5.mp4", "x.latents"]}))
    assert (margin_of(cli / "clip.m0.mp4"), margin_of(cli / "clip.m0.5.mp4")) == (0.0, 0.5)
    (cli / "one.mp4.json").write_text(json.dumps({"params": {"margins": [0.25]}, "outputs": ["sub/one.mp4"]}))
    assert margin_of(cli / "one.mp4") == 0.25
    (tmp_path / "anonymized.json").write_text(json.dumps({"params": {"margins": [0.7]}, "tracks": []}))
    assert margin_of(tmp_path / "anonymized.mp4") == 0.7          # the Video tab's record lists no outputs
    assert margin_of(tmp_path / "mine.m0.9.mkv") == 0.9 and margin_of(tmp_path / "mine.mkv") is None


def tiny_clip(path: Path, frames: list[np.ndarray]) -> Path:
    return write_clip(path, frames, audio_hz=None)


def test_clip_sets_from_a_folder_and_the_clips_that_cannot_be_compared(tmp_path):
    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(3)]
    original = tiny_clip(tmp_path / "clip.mkv", frames)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("clip.m0.mkv", "clip.m0.5.mkv"):
        shutil.copyfile(original, out / name)
    (out / "clip.mkv.json").write_text(json.dumps({"status": "ok", "params": {"margins": [0.0, 0.5]},
                                                   "outputs": ["clip.m0.mkv", "clip.m0.5.mkv", "l.safetensors"]}))
    found = load_clip_set(original, [out])
    assert [(c.name, c.margin) for c in found.anonymized] == [("clip.m0.mkv", 0.0), ("clip.m0.5.mkv", 0.5)]
    assert [c.margin for c in load_clip_set(original, [out], margins=[0.1, 0.2]).anonymized] == [0.1, 0.2]
    with pytest.raises(FalcoError, match="2 anonymized clip"):
        load_clip_set(original, [out], margins=[0.1])
    with pytest.raises(FalcoError, match="has 2 frames of 16x16, the original 3"):
        load_clip_set(original, [tiny_clip(tmp_path / "short.mkv", frames[:2])])
    with pytest.raises(FalcoError, match="the original itself"):
        load_clip_set(original, [original])
    (tmp_path / "no-record").mkdir()
    with pytest.raises(FalcoError, match="no record clip.mkv.json"):
        load_clip_set(original, [tmp_path / "no-record"])


def test_usage_errors_exit_2_and_clips_that_do_not_match_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        main(["--clip", str(tmp_path / "only.mkv")])
    assert usage.value.code == 2
    frames = [np.zeros((16, 16, 3), np.uint8)] * 2
    original, other = tiny_clip(tmp_path / "a.mkv", frames), tiny_clip(tmp_path / "b.mkv", frames[:1])
    assert main(["--clip", str(original), str(other), "--out", str(tmp_path / "report"), "--no-progress"]) == 1
    assert "it is not its anonymized version" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


# --- A run on random judges ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluator(tiny_pipeline, tiny_weights_with_judges):
    """The random judges, with the tiny pipeline's ArcFace and dlib models (what Evaluator.from_pretrained would load
    from the same folder, tests/test_evaluate.py checks; shared here: loading dlib's models again takes seconds)."""
    from falco.evaluate.judges import load_judges
    from falco.evaluate.metrics import Evaluator
    return Evaluator(load_judges(tiny_weights_with_judges, "cpu", progress=False), tiny_pipeline.nets.arcface,
                     tiny_pipeline.analyzer, tiny_pipeline.recognizer, torch.device("cpu"), EvaluationConfig())


@pytest.fixture(scope="module")
def clips(astronaut, tmp_path_factory) -> tuple[Path, Path, Path]:
    """The original; an "anonymized" clip equal to it (every face left as it was); one with the even frames'
    colours inverted (the odd frames' faces left as they were)."""
    folder = tmp_path_factory.mktemp("clips")
    frames = pan_zoom_frames(Image.open(astronaut), FRAMES, SIZE)
    half = [255 - f if i % 2 == 0 else f for i, f in enumerate(frames)]
    return (tiny_clip(folder / "clip.mkv", frames), tiny_clip(folder / "same.mkv", frames),
            tiny_clip(folder / "half.mkv", half))


@pytest.fixture(scope="module")
def run(clips, evaluator, tmp_path_factory):
    """`python -m falco.evaluate --clip` (its main, with the module's evaluator): (figures, out folder, stdout)."""
    import contextlib
    import io

    from falco.evaluate.metrics import Evaluator
    out = tmp_path_factory.mktemp("report")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(Evaluator, "from_pretrained", classmethod(lambda cls, *args, **kwargs: evaluator))
        code = main(["--clip", *map(str, clips), "--margin", "0", "0.5", "--out", str(out), "--no-progress"])
    assert code == 0
    return json.loads((out / "metrics.json").read_text()), out, printed.getvalue()


@pytest.mark.slow
def test_a_clip_left_as_it_was_is_unanonymized_and_reidentified_everywhere(run):
    figures, _, _ = run
    setup, original, same = figures["input"], figures["original"], figures["clips"][0]
    assert setup["tracks"] == 1 and setup["frames"] == FRAMES and setup["track_frames"] == FRAMES
    assert (same["clip"], same["margin"]) == ("same.mkv", 0.0)
    assert same["unanonymized_percent"] == 100.0 and same["unanonymized_frames"] == FRAMES
    assert same["reid_percent"] == {judge: 100.0 for judge in IDENTITY_JUDGES}
    assert same["landmark_error"] == 0.0 and same["landmark_faces"] == FRAMES - setup["filled_frames"]
    assert same["flicker"] == original["flicker"] > 0 and same["flicker_ratio"] == 1.0
    assert same["detection_percent"] == original["detection_percent"]
    for judge, found in original["consistency"].items():
        assert same["consistency"][judge]["mean"] == pytest.approx(found["mean"], abs=1e-6)
    (track,) = same["tracks"]
    assert track["per_frame"]["change"] == [0.0] * FRAMES


@pytest.mark.slow
def test_the_frames_left_unanonymized_are_named(run):
    figures, _, _ = run
    half = figures["clips"][1]
    (track,) = half["tracks"]
    odd = [f for f in range(FRAMES) if f % 2]
    assert track["unanonymized_frames"] == odd and half["unanonymized_percent"] == 100.0 * len(odd) / FRAMES
    per_frame = track["per_frame"]
    assert all((d == 0.0) == (f in odd) for f, d in zip(per_frame["frame"], per_frame["change"]))
    # Every judge takes an unchanged face for the person: at least the odd frames are re-identified.
    for judge in IDENTITY_JUDGES:
        assert all(hit for f, hit in zip(per_frame["frame"], per_frame["reidentified"][judge]) if f in odd)


@pytest.mark.slow
def test_the_table_and_a_self_contained_report(run):
    figures, out, printed = run
    headings, rows = table_rows(figures)
    assert [row[0] for row in rows] == ["Original", "m = 0 (same.mkv)", "m = 0.5 (half.mkv)"]
    assert rows[1][headings.index("Unanon.")] == "100.00 %" and rows[2][headings.index("Flicker x")] != "-"
    assert printed.startswith(format_table(figures)) and "metrics.json and report.html written" in printed
    page = (out / "report.html").read_text()
    # Random judges say so: in the terminal (above and below the table), metrics.json and the report's banner.
    assert {"facenet_casia", "facenet_vgg", "pnet"} <= set(figures["random_judges"])
    assert "fid_inception" not in figures["judges"]                 # no clip figure rests on FID's network
    assert printed.count("WARNING: RANDOM JUDGES") == 2 and "<div class='random' role='alert'>" in page
    real = {**figures, "judges": {judge: {**entry, "origin": "public sources"}
                                  for judge, entry in figures["judges"].items()}}
    assert "RANDOM" not in format_table(real)
    sources = [part.split("'", 1)[0] for part in page.split("src='")[1:]]
    assert len(sources) == 5 + min(EvaluationConfig().examples, FRAMES) * 3   # plots; original and two clips
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert "http" not in page and not list(out.glob("*.tmp"))
    # With two persons the table per track follows: each person's original, then each clip's.
    two = json.loads(json.dumps(figures))
    two["input"]["tracks"] = 2
    two["original"]["tracks"].append({**two["original"]["tracks"][0], "track": 2})
    for row in two["clips"]:
        row["tracks"].append({**row["tracks"][0], "track": 2})
    assert [row[0] for row in track_rows(two)[1]][3:] == [
        "Track 2: original", "Track 2: m = 0 (same.mkv)", "Track 2: m = 0.5 (half.mkv)"]
    assert "Track 2: m = 0.5 (half.mkv)" in format_table(two)


@pytest.mark.slow
def test_an_original_without_a_face(evaluator, tmp_path):
    blank = [np.full((*SIZE, 3), 128, np.uint8)] * 2
    clip_set = load_clip_set(tiny_clip(tmp_path / "blank.mkv", blank), [tiny_clip(tmp_path / "anon.mkv", blank)])
    with pytest.raises(NoFaceError, match="No face was found in any frame"):
        ClipEvaluator(evaluator).evaluate(clip_set, progress=False)
