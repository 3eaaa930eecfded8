import json
import os
import re
import shutil
import signal

import pytest
from PIL import Image
from safetensors.torch import load_file

from falco.cli import main
from falco.config import CliConfig, OptimConfig
from falco.errors import FalcoError
from falco.output_files import write_atomic
from falco.photo_folders import Shard, anonymize_tree, list_images

QUICK = OptimConfig(steps=1)


@pytest.fixture
def tree(tmp_path, astronaut):
    """in/ with two photos in nested folders, a file that is not an image and a photo without a face."""
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "b" / "c").mkdir(parents=True)
    shutil.copy(astronaut, root / "a" / "astronaut.png")
    Image.open(astronaut).convert("RGB").save(root / "b" / "c" / "astronaut.JPG", quality=95)
    (root / "b" / "broken.jpg").write_bytes(b"not an image at all")
    Image.new("RGB", (160, 120), "gray").save(root / "b" / "blank.png")
    (root / "notes.txt").write_text("not a photo")
    return root


class Interrupting:
    """A pipeline whose run of one chosen photo is interrupted (Ctrl-C); counts the runs."""

    def __init__(self, pipeline, interrupt_on: str | None = None, signal_number: int | None = None):
        self.pipeline, self.interrupt_on, self.calls = pipeline, interrupt_on, []
        self.source, self.bank, self.signal_number = pipeline.source, pipeline.bank, signal_number

    def anonymize(self, photo, **kwargs):
        self.calls.append(photo.name)
        for event in self.pipeline.anonymize(photo, **kwargs):
            if self.interrupt_on == photo.name and getattr(event, "step", 0) == 1:
                if self.signal_number is None:
                    raise KeyboardInterrupt
                # To this thread, so its handler runs before the next step: os.kill lets the kernel pick a thread,
                # which under load may run the handler only after the photo is done.
                signal.raise_signal(self.signal_number)
            yield event


def test_every_file_is_in_exactly_one_shard():
    files = [f"dir{i % 7}/img_{i:05d}.jpg" for i in range(2000)]
    for n in (1, 2, 3, 8):
        shards = [{f for f in files if Shard(i, n).holds(f)} for i in range(n)]
        assert sum(len(s) for s in shards) == len(files)
        assert set().union(*shards) == set(files)
        assert all(len(s) > len(files) / n / 2 for s in shards)   # no shard is starved


def test_listing_finds_images_and_skips_the_output_tree(tree):
    (tree / "out").mkdir()
    Image.new("RGB", (8, 8)).save(tree / "out" / "old_result.png")
    assert list_images(tree, CliConfig().image_extensions, exclude=(tree / "out").resolve()) == [
        "a/astronaut.png", "b/blank.png", "b/broken.jpg", "b/c/astronaut.JPG"]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.slow
def test_command_line_writes_a_mirror_tree_and_records_failures(tree, tmp_path, tiny_weights, capsys, umask_022):
    out = tmp_path / "out"
    code = main(["anonymize", str(tree), str(out), "--weights", str(tiny_weights), "--steps", "2",
                 "--margin", "0", "0.5", "--no-progress", "--device", "cpu"])
    assert code == 3   # two images failed
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["failed"] == 2

    for relative, suffix in (("a/astronaut.png", ".png"), ("b/c/astronaut.JPG", ".JPG")):
        record = json.loads((out / (relative + ".json")).read_text())
        assert record["status"] == "ok" and record["source"] == relative
        assert [(f["face"], f["margin"]) for f in record["faces"]] == [(1, 0.0), (1, 0.5)]   # numbered from 1
        assert all(f["recognizer_distance"] > 0 for f in record["faces"])
        assert record["params"]["optim"]["steps"] == 2
        # One carrier for m: the run's margins, each face's own; the optimisation's settings hold none.
        assert record["params"]["margins"] == record["settings"]["margins"] == [0.0, 0.5]
        assert "margin" not in record["params"]["optim"] and "margin" not in record["settings"]["optim"]
        for name in record["outputs"][:2]:
            assert name.endswith(suffix)
            with Image.open(out / name) as image:
                assert image.size == (512, 512) and not image.getexif()
        latents = load_file(out / (relative + ".latents.safetensors"))
        assert latents["wplus"].shape == (1, 2, 10, 64) and latents["margin"].tolist() == [0.0, 0.5]
        assert latents["wplus_inversion"].shape == (1, 10, 64) and latents["face"].tolist() == [1]
        assert latents["fake_index"].tolist() == [record["faces"][0]["fake_index"]]

    broken = json.loads((out / "b" / "broken.jpg.json").read_text())
    blank = json.loads((out / "b" / "blank.png.json").read_text())
    assert broken["status"] == "failed" and broken["error_type"] == "InputImageError"
    assert blank["status"] == "failed" and blank["error_type"] == "NoFaceError"
    assert not (out / "notes.txt.json").exists()
    # Every file as the umask says, the W+ codes too.
    assert {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()} == {"0o644"}


@pytest.fixture
def no_networks(monkeypatch):
    """Loading the networks fails the test: usage errors must come first."""
    from falco.pipeline import FalcoPipeline
    monkeypatch.setattr(FalcoPipeline, "from_pretrained", lambda *a, **k: pytest.fail("networks loaded"))


@pytest.mark.parametrize("option, match", [
    (["--margin", "5"], "m must lie between 0 and 1"), (["--margin", "0", "-1"], "not -1"),
    (["--margin", "nan"], "not nan"), (["--steps", "-3"], "Steps must be at least 1"), (["--steps", "0"], "not 0"),
    (["--fake-k", "-2"], "fake_k"), (["--seed", str(2**70)], "seed"),
    (["--refine-steps", "-1"], "Refine steps must not be negative, not -1")])
def test_bad_settings_are_usage_errors_before_the_networks_load(tree, tmp_path, no_networks, capsys, option, match):
    with pytest.raises(SystemExit) as stop:
        main(["anonymize", str(tree), str(tmp_path / "out"), *option])
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: " in last and re.search(match, last), last
    assert not (tmp_path / "out").exists()


def test_a_fake_k_beyond_the_bank_stops_before_the_first_image(tree, tmp_path, tiny_weights, capsys):
    code = main(["anonymize", str(tree), str(tmp_path / "out"), "--weights", str(tiny_weights), "--fake-k", "99999",
                 "--no-progress", "--device", "cpu"])
    assert code != 0 and "error: fake_k is 99999 but the fake bank holds" in capsys.readouterr().err
    assert not list((tmp_path / "out").rglob("*.json"))


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(tree, tmp_path, tiny_pipeline):
    out = tmp_path / "out"
    first = Interrupting(tiny_pipeline, interrupt_on="astronaut.JPG")
    with pytest.raises(KeyboardInterrupt) as stop:
        anonymize_tree(first, tree, out, optim=QUICK, progress=False)
    assert str(stop.value) == "interrupted after 3 of 4 images"
    assert first.calls == ["astronaut.png", "blank.png", "broken.jpg", "astronaut.JPG"]
    assert json.loads((out / "a" / "astronaut.png.json").read_text())["status"] == "ok"
    assert not (out / "b" / "c").exists() or not list((out / "b" / "c").iterdir())   # nothing half-written

    done_before = (out / "a" / "astronaut.png").stat().st_mtime_ns
    second = Interrupting(tiny_pipeline)
    summary = anonymize_tree(second, tree, out, optim=QUICK, progress=False)
    assert second.calls == ["astronaut.JPG"]
    assert (summary.total, summary.done, summary.skipped, summary.failed) == (4, 1, 3, 0)
    assert json.loads((out / "b" / "c" / "astronaut.JPG.json").read_text())["status"] == "ok"
    assert (out / "a" / "astronaut.png").stat().st_mtime_ns == done_before

    third = Interrupting(tiny_pipeline)
    summary = anonymize_tree(third, tree, out, optim=QUICK, retry_failed=True, progress=False)
    assert sorted(third.calls) == ["blank.png", "broken.jpg"] and summary.failed == 2
    assert summary.redone == 0   # retried with the same settings: not "done with other settings"


class Refusing:
    """A pipeline that turns every photo down at once: the split is all that is under test."""
    source = "refusing"

    def __init__(self):
        self.calls = []

    def anonymize(self, photo, **kwargs):
        self.calls.append(photo.name)
        raise FalcoError("refused")


def test_shards_split_the_work_between_runs(tree, tmp_path):
    out = tmp_path / "out"
    runs = [Refusing() for _ in range(3)]
    for i, run in enumerate(runs):
        summary = anonymize_tree(run, tree, out, shard=Shard(i, 3), progress=False)
        assert summary.total == len(run.calls) == summary.failed
    calls = [name for run in runs for name in run.calls]
    assert sorted(calls) == sorted(["astronaut.png", "astronaut.JPG", "blank.png", "broken.jpg"])
    assert len(list(out.rglob("*.json"))) == 4


@pytest.mark.parametrize("case, match", [
    ("file", "is a file, not a folder"), ("same", "is the input folder"), ("parent", "lies inside"),
    ("under_a_file", "Cannot create the output folder")])
def test_an_output_folder_that_cannot_hold_the_outputs_is_a_usage_error(tree, tmp_path, no_networks, capsys, case,
                                                                        match):
    (tmp_path / "a_file").write_text("not a folder")
    out = {"file": tmp_path / "a_file", "same": tree, "parent": tmp_path,
           "under_a_file": tmp_path / "a_file" / "out"}[case]
    with pytest.raises(SystemExit) as stop:
        main(["anonymize", str(tree), str(out)])
    assert stop.value.code == 2 and match in capsys.readouterr().err.strip().splitlines()[-1]


class Vandal:
    """Anonymizes nothing; on the named photo it replaces the output folder by a file, then fails."""
    source = "vandal"

    def __init__(self, out, on: str):
        self.out, self.on, self.calls = out, on, []

    def anonymize(self, photo, **kwargs):
        self.calls.append(photo.name)
        if photo.name == self.on:
            shutil.rmtree(self.out)
            self.out.write_text("the output folder is gone")
        raise FalcoError("refused")


def test_a_failure_that_cannot_be_recorded_is_reported_and_the_run_goes_on(tree, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b").write_text("a file where the records of b/ should go")
    summary = anonymize_tree(Refusing(), tree, out, progress=False)
    assert (summary.total, summary.failed) == (4, 4)
    assert json.loads((out / "a" / "astronaut.png.json").read_text())["status"] == "failed"
    assert caplog.text.count("could not be recorded") == 3


def test_an_output_folder_that_goes_away_stops_the_run_with_a_clear_message(tree, tmp_path):
    out = tmp_path / "out"
    vandal = Vandal(out, on="blank.png")
    with pytest.raises(FalcoError, match=r"Cannot write to the output folder .* stopped after 2 of 4 images"):
        anonymize_tree(vandal, tree, out, progress=False)
    assert vandal.calls == ["astronaut.png", "blank.png"]


@pytest.mark.slow
def test_a_rerun_with_other_settings_redoes_the_images_and_replaces_their_outputs(tree, tmp_path, tiny_pipeline):
    out = tmp_path / "out"
    photo = out / "a" / "astronaut.png"
    first = anonymize_tree(Interrupting(tiny_pipeline), tree, out, margins=(0.0, 0.5), optim=QUICK, progress=False)
    assert (first.done, first.failed, first.redone) == (2, 2, 0)
    assert sorted(p.name for p in photo.parent.iterdir()) == [
        "astronaut.m0.5.png", "astronaut.m0.png", "astronaut.png.json", "astronaut.png.latents.safetensors"]

    again = anonymize_tree(Interrupting(tiny_pipeline), tree, out, margins=(0.0, 0.5), optim=QUICK, progress=False)
    assert (again.skipped, again.redone) == (4, 0)

    for change in ({"optim": OptimConfig(steps=2)}, {"optim": OptimConfig(steps=2, seed=3)},
                   {"optim": OptimConfig(steps=2, seed=3), "fake_k": 4}):
        rerun = Interrupting(tiny_pipeline)
        summary = anonymize_tree(rerun, tree, out, margins=(0.5,), **change, progress=False)
        assert sorted(rerun.calls) == ["astronaut.JPG", "astronaut.png", "blank.png", "broken.jpg"]
        assert (summary.done, summary.failed, summary.redone, summary.skipped) == (2, 2, 4, 0)
        record = json.loads((out / "a" / "astronaut.png.json").read_text())
        assert record["settings"]["margins"] == [0.5] and record["params"]["optim"] == record["settings"]["optim"]
        assert record["settings"]["optim"]["seed"] == change["optim"].seed
        assert record["settings"]["fake_k"] == change.get("fake_k", 1)
        # One m now: x.png, and the earlier x.m0.png and x.m0.5.png are gone.
        assert sorted(p.name for p in photo.parent.iterdir()) == [
            "astronaut.png", "astronaut.png.json", "astronaut.png.latents.safetensors"]


def test_a_record_from_when_the_optimisation_settings_held_m_still_stands():
    """Records written before m left OptimConfig keep an ``optim.margin`` that no run used: they stand (skipped);
    any other difference still has the input done again."""
    from falco.photo_folders import Summary, run_settings, still_good
    settings = run_settings((0.5,), QUICK, 1, "weights")
    assert "margin" not in settings["optim"]
    old = {"status": "ok", "settings": {**settings, "optim": {**settings["optim"], "margin": 0.0}}}
    summary = Summary()
    assert still_good(old, settings, False, summary, "x.png") and (summary.skipped, summary.redone) == (1, 0)
    other = {"status": "ok", "settings": {**settings, "optim": {**settings["optim"], "margin": 0.0, "steps": 9}}}
    assert not still_good(other, settings, False, summary, "y.png") and summary.redone == 1


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_ends_the_command_with_one_line(tree, tmp_path, tiny_pipeline, monkeypatch, capsys,
                                                          signal_number):
    from falco.pipeline import FalcoPipeline
    stopping = Interrupting(tiny_pipeline, interrupt_on="astronaut.JPG", signal_number=signal_number)
    monkeypatch.setattr(FalcoPipeline, "from_pretrained", lambda *a, **k: stopping)
    # Ctrl-C as a terminal delivers it: a process started in the background (a CI runner, `cmd &`, nohup) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler, rightly; the test must not depend on it.
    interactive = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGTERM)
        code = main(["anonymize", str(tree), str(tmp_path / "out"), "--steps", "1", "--no-progress"])
    finally:
        signal.signal(signal.SIGINT, interactive)
    assert code == 130 and signal.getsignal(signal.SIGTERM) == before
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted after 3 of 4 images; run the same command again to resume")
    assert not list((tmp_path / "out" / "b" / "c").glob("*"))


def test_an_interrupted_write_leaves_no_file(tmp_path):
    def write(tmp):
        tmp.write_bytes(b"half an image")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "x.png", write)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_gif_is_anonymized_as_its_first_frame_like_the_app_does(tmp_path, tiny_pipeline, astronaut):
    root = tmp_path / "in"
    root.mkdir()
    face = Image.open(astronaut).convert("RGB")
    face.save(root / "moving.gif", save_all=True, append_images=[Image.new("RGB", face.size, "gray")], duration=100)
    out = tmp_path / "out"
    summary = anonymize_tree(Interrupting(tiny_pipeline), root, out, optim=QUICK, progress=False)
    assert (summary.total, summary.done) == (1, 1)
    assert json.loads((out / "moving.gif.json").read_text())["outputs"][0] == "moving.gif"
    with Image.open(out / "moving.gif") as image:
        assert image.format == "GIF" and image.size == face.size and getattr(image, "n_frames", 1) == 1


def test_a_run_with_failed_images_exits_3_and_so_does_its_rerun(tree, tmp_path, monkeypatch, capsys):
    from falco import cli
    from falco.pipeline import FalcoPipeline
    refusing = Refusing()
    refusing.bank = range(10)
    monkeypatch.setattr(FalcoPipeline, "from_pretrained", lambda *a, **k: refusing)
    assert cli.EXIT_IMAGES_FAILED == 3 and "Exit status" in cli.ANONYMIZE_HELP
    for run in ("first", "rerun"):   # the rerun skips the failed images, and still says they failed
        code = main(["anonymize", str(tree), str(tmp_path / "out"), "--no-progress"])
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == 3 and summary["failed"] + summary["failed_before"] == 4, (run, summary)
    assert (summary["skipped"], summary["failed_before"]) == (4, 4)


def main_not_stopped(argv):
    """``main``, a KeyboardInterrupt out of it a failure (not the end of the whole test session)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt out of main: a traceback for the user")


class Stopping:
    """Raises KeyboardInterrupt: Ctrl-C at one step of the start-up."""

    def __call__(self, *args, **kwargs):
        raise KeyboardInterrupt


@pytest.mark.parametrize("step", ["checks", "out_dir", "logging", "import", "loading"])
def test_ctrl_c_during_the_start_up_ends_the_command_with_one_line(tree, tmp_path, monkeypatch, capsys, step):
    import builtins
    import logging

    from falco import cli, photo_folders
    from falco.pipeline import FalcoPipeline
    if step == "import":
        real_import = builtins.__import__

        def importing(name, *args, **kwargs):
            if name == "falco.pipeline":
                raise KeyboardInterrupt
            return real_import(name, *args, **kwargs)
        monkeypatch.setattr(builtins, "__import__", importing)
    else:
        target = {"checks": (cli, "check_run_settings"), "out_dir": (photo_folders, "prepare_out_dir"),
                  "logging": (logging, "basicConfig"), "loading": (FalcoPipeline, "from_pretrained")}[step]
        monkeypatch.setattr(*target, Stopping())
    before = signal.getsignal(signal.SIGTERM)
    code = main_not_stopped(["anonymize", str(tree), str(tmp_path / "out"), "--no-progress"])
    assert code == 130 and signal.getsignal(signal.SIGTERM) == before
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted before the first image; run the same command again to resume")
    assert not (tmp_path / "out").exists()


def test_sigterm_during_the_start_up_ends_the_command_with_one_line(tree, tmp_path, monkeypatch, capsys):
    from falco import cli
    def missed(signum, frame):   # SIGTERM not handled by the command (the default handler would end pytest)
        raise AssertionError("SIGTERM reached the handler from before the command")
    monkeypatch.setattr(cli, "check_run_settings", lambda *a: signal.raise_signal(signal.SIGTERM))
    before = signal.signal(signal.SIGTERM, missed)
    try:
        code = main_not_stopped(["anonymize", str(tree), str(tmp_path / "out"), "--no-progress"])
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code == 130 and "interrupted before the first image" in capsys.readouterr().err


def test_the_progress_bar_counts_each_image_with_its_postfix(tree, tmp_path, capsys):
    anonymize_tree(Refusing(), tree, tmp_path / "out", progress=True)
    frames = [f for f in capsys.readouterr().err.split("\r") if "failed=" in f]
    assert frames
    for frame in frames:
        count = int(re.search(r"(\d+)/4 \[", frame).group(1))
        postfix = dict(re.findall(r"(done|skipped|failed)=(\d+)", frame))
        assert count == sum(int(n) for n in postfix.values()), frame
    assert "4/4 [" in frames[-1] and "failed=4" in frames[-1]


@pytest.mark.parametrize("offline", [True, False])
def test_an_unreachable_hub_names_both_weights_and_the_variable(tree, tmp_path, monkeypatch, capsys, offline):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("no connection")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    code = main(["anonymize", str(tree), str(tmp_path / "out"), "--weights", "someone/weights", "--no-progress",
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "--weights" in err and "FALCO_WEIGHTS_REPO" in err, err


def test_a_run_whose_weights_fail_to_load_leaves_no_output_folder_it_made(tree, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    code = main(["anonymize", str(tree), str(out), "--weights", str(tmp_path / "no-weights"), "--no-progress"])
    assert code == 1 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()

    out.mkdir(parents=True)   # one that was there before stays, empty as it is
    assert main(["anonymize", str(tree), str(out), "--weights", str(tmp_path / "no-weights"), "--no-progress"]) == 1
    assert out.is_dir()


def test_the_command_line_module_loads_without_torch():
    # Its import is the start-up before main runs: seconds of torch there would meet a Ctrl-C with a traceback.
    import subprocess
    import sys
    from pathlib import Path
    check = "import sys, falco.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", check], cwd=Path(__file__).parents[1], check=True)
