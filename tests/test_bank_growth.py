"""A prepared set's bank grown beside it (falco.weights.growth), in the app while no run goes (falco.ui.grower) and
from the command line; and where a Space keeps what it prepares (falco.weights.storage)."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from falco.bank import FakeBank, build_bank
from falco.config import PERSISTENT_ROOT_ENV, PREPARED_WEIGHTS_ENV, SPACE_ID_ENV, BankConfig
from falco.models import io
from falco.ui import engine as engine_module
from falco.ui import startup
from falco.ui.grower import BankGrower
from falco.weights import ARTIFACTS, MANIFEST_NAME, Manifest
from falco.weights.growth import GROWN_FROM, RunGate, grow_bank, grown_bank, growth_folder
from falco.weights.manifest import sha256_file
from falco.weights.storage import RESTART_NOTE, keep_on_persistent_storage, restart_prepares_again

ROOT = Path(__file__).resolve().parents[1]
# Small parts and saves, so that a few rows cross every boundary: a part rewritten, a part settled, a new one.
SMALL_PARTS = BankConfig(cpu_chunk_rows=3, growth_part_rows=4)


@pytest.fixture
def tiny_set(tiny_weights, tmp_path) -> Path:
    """The tiny set's files (links) in a folder of this test's own: its growth folder goes beside it."""
    folder = tmp_path / "prepared-weights"
    folder.mkdir()
    for name in (MANIFEST_NAME, ARTIFACTS["generator"], ARTIFACTS["farl"], ARTIFACTS["fake_bank"]):
        (folder / name).symlink_to(tiny_weights / name)
    return folder


@pytest.fixture(scope="module")
def tiny_nets(tiny_weights):
    generator, mean_w = io.load_generator(tiny_weights / ARTIFACTS["generator"])
    return generator, mean_w, io.load_farl(tiny_weights / ARTIFACTS["farl"])


@pytest.fixture(scope="module")
def built_at_once(tiny_weights, tiny_nets, tmp_path_factory) -> FakeBank:
    """The first 44 rows of the tiny set's bank, built in one go as `falco bank build` would."""
    return build_bank(tmp_path_factory.mktemp("bank") / "bank.safetensors", 44, *tiny_nets, progress=False)


def assert_same_rows(bank: FakeBank, reference: FakeBank) -> None:
    assert torch.equal(bank.seeds, reference.seeds)
    torch.testing.assert_close(bank.w, reference.w)
    torch.testing.assert_close(bank.embeddings, reference.embeddings)


@pytest.mark.slow
def test_a_bank_grown_in_parts_and_resumed_holds_the_rows_a_full_build_makes(tiny_set, tiny_nets, built_at_once):
    base = FakeBank.load(tiny_set / ARTIFACTS["fake_bank"])
    assert len(base) == 32
    assert_same_rows(base, built_at_once.slice(32))   # the set's own rows are the first of the full bank
    stop, saved = threading.Event(), []

    def interrupt_after_two_saves(bank: FakeBank) -> None:
        saved.append(len(bank))
        if len(saved) == 2:
            stop.set()
    first = grow_bank(tiny_set, 44, *tiny_nets, config=SMALL_PARTS, stop=stop, on_saved=interrupt_after_two_saves)
    assert saved == [35, 38] and len(first) == 38 and len(grown_bank(tiny_set)) == 38
    folder = growth_folder(tiny_set)
    # A part is rewritten at each save until it holds growth_part_rows rows: 3, then 6 rows from row 32.
    assert [(p.name, len(FakeBank.load(p))) for p in folder.glob("*.safetensors")] == [("0000000032.safetensors", 6)]

    saved.clear()
    grown = grow_bank(tiny_set, 44, *tiny_nets, config=SMALL_PARTS, on_saved=lambda bank: saved.append(len(bank)))
    assert saved == [38, 41, 44]   # the rows grown before come first, then the rest
    assert [(p.stem, len(FakeBank.load(p))) for p in sorted(folder.glob("*.safetensors"))] == [
        ("0000000032", 6), ("0000000038", 6)]
    assert_same_rows(grown, built_at_once)
    assert_same_rows(grown_bank(tiny_set), built_at_once)
    manifest = Manifest.load(tiny_set / MANIFEST_NAME)   # the set itself is left as it was
    assert sha256_file(tiny_set / ARTIFACTS["fake_bank"]) == manifest.artifacts["fake_bank"].sha256


def test_rows_grown_from_another_set_are_never_mixed_in(tiny_set, tiny_nets, built_at_once):
    grow_bank(tiny_set, 34, *tiny_nets, config=SMALL_PARTS)
    record = growth_folder(tiny_set) / GROWN_FROM
    lineage = json.loads(record.read_text())
    record.write_text(json.dumps({**lineage, "generator": "0" * 64}))   # as if the set were prepared anew
    assert len(grown_bank(tiny_set)) == 32
    assert_same_rows(grow_bank(tiny_set, 33, *tiny_nets, config=SMALL_PARTS), built_at_once.slice(33))
    assert json.loads(record.read_text()) == lineage


def test_growing_stops_mid_row_when_a_run_starts_and_goes_on_when_it_ends(tiny_set, tiny_nets, built_at_once):
    generator = tiny_nets[0]
    gate, paused, mid_row, run_started, result = RunGate(), threading.Event(), threading.Event(), threading.Event(), []
    rows_rendered = []

    def run_starts_during_the_third_row(module, args) -> None:
        if threading.current_thread().name == "grower":
            rows_rendered.append(1)
            if len(rows_rendered) == 3:
                mid_row.set()
                run_started.wait(10)   # the row's generator call goes on only once the run holds the gate

    hook = generator.register_forward_pre_hook(run_starts_during_the_third_row)
    grower = threading.Thread(name="grower", target=lambda: result.append(
        grow_bank(tiny_set, 44, *tiny_nets, config=SMALL_PARTS, gate=gate, on_pause=paused.set)))
    try:
        grower.start()
        assert mid_row.wait(30)
        with gate.hold():
            run_started.set()
            # It gives way at its next layer (0.08 s on the idle machine: README); the wait is generous so that a
            # loaded machine cannot fail it, and the row given up shows below (13 rows rendered for 12).
            assert paused.wait(30)
            rendered = len(rows_rendered)
            time.sleep(0.2)
            assert len(rows_rendered) == rendered and not result   # nothing made while the run goes
        grower.join(60)
    finally:
        hook.remove()
    assert not grower.is_alive() and len(rows_rendered) == 13   # 12 rows, the third one twice
    assert_same_rows(result[0], built_at_once)   # the row given up was made again, the same


def test_the_app_grows_the_engines_bank_only_while_no_run_goes(tiny_set, tiny_nets, built_at_once):
    generator, mean_w, farl = tiny_nets
    engine = SimpleNamespace(bank=FakeBank.load(tiny_set / ARTIFACTS["fake_bank"]), device=torch.device("cpu"),
                             nets=SimpleNamespace(generator=generator, mean_w=mean_w, farl=farl))
    loader = engine_module.EngineLoader(lambda: engine)
    loader.get()
    before = engine.bank
    with loader.running():
        loader.grower = grower = BankGrower(loader, tiny_set, 44, torch.device("cpu")).start()
        assert grower.paused.wait(10)
        assert engine.bank is before and not grower.done.is_set()   # the run's bank is left as it is
        assert loader.status() == ("ready", "The networks are loaded. The fake bank holds 32 fakes; more are made "
                                            "while no run is going, up to 44.")
    assert grower.done.wait(60)
    grower.stop()
    assert_same_rows(engine.bank, built_at_once)
    assert loader.status() == ("ready", "The networks are loaded. The fake bank holds 44 fakes.")


def test_the_command_line_prepares_then_grows_the_bank(tiny_set, built_at_once, monkeypatch, capsys):
    from falco.weights import __main__ as cli
    monkeypatch.setattr(cli, "prepare_weights", lambda out, bank_size, device, progress, built_by: tiny_set)
    assert cli.main(["prepare", "--device", "cpu", "--grow-to", "36"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"weights prepared in {tiny_set}",
                                f"the fake bank holds 36 fakes (rows after the set's own in {growth_folder(tiny_set)})"]
    assert err.splitlines()[-1] == "fake bank: 36 of 36 fakes"
    assert_same_rows(grown_bank(tiny_set), built_at_once.slice(36))


# --- Persistent storage ------------------------------------------------------------------------------------------
def test_persistent_storage_keeps_the_cache_and_the_set_unless_the_environment_says_otherwise(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    environ = {PERSISTENT_ROOT_ENV: str(root)}
    assert keep_on_persistent_storage(environ) == {"HF_HOME": str(root / ".huggingface"),
                                                   PREPARED_WEIGHTS_ENV: str(root / "falco/prepared-weights")}
    environ = {PERSISTENT_ROOT_ENV: str(root), "HF_HOME": "/mine", PREPARED_WEIGHTS_ENV: "/set"}
    assert keep_on_persistent_storage(environ) == {} and environ["HF_HOME"] == "/mine"
    environ = {PERSISTENT_ROOT_ENV: str(root), "HF_HOME": "/mine"}
    assert keep_on_persistent_storage(environ) == {PREPARED_WEIGHTS_ENV: str(root / "falco/prepared-weights")}
    (tmp_path / "file").write_text("")
    for missing in (tmp_path / "none", tmp_path / "file"):
        assert keep_on_persistent_storage({PERSISTENT_ROOT_ENV: str(missing)}) == {}
    assert restart_prepares_again({SPACE_ID_ENV: "user/space", PERSISTENT_ROOT_ENV: str(tmp_path / "none")})
    assert not restart_prepares_again({SPACE_ID_ENV: "user/space", PERSISTENT_ROOT_ENV: str(root)})
    assert not restart_prepares_again({PERSISTENT_ROOT_ENV: str(tmp_path / "none")})   # not a Space: the disk stays


def test_huggingface_hub_reads_the_cache_on_persistent_storage(tmp_path):
    """HF_HOME is decided before huggingface_hub is imported, which reads it once."""
    check = ("import sys; from falco.weights.storage import keep_on_persistent_storage as keep; "
             "assert 'huggingface_hub' not in sys.modules; keep(); "
             "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE")}
    env[PERSISTENT_ROOT_ENV] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, env=env,
                            check=True)
    assert result.stdout.strip() == str(tmp_path / ".huggingface" / "hub")


@pytest.mark.slow
def test_on_a_space_without_persistent_storage_the_banner_says_a_restart_prepares_again(tiny_weights, tmp_path,
                                                                                          monkeypatch):
    from falco.weights.prepare import PrepareProgress
    monkeypatch.setenv(SPACE_ID_ENV, "user/space")
    monkeypatch.setenv(PERSISTENT_ROOT_ENV, str(tmp_path / "no-storage"))
    step = PrepareProgress("building", "the fake bank", 1, 1, 0.5)

    def preparing(device, progress, built_by):
        progress(step)
        return tiny_weights
    monkeypatch.setattr(startup, "prepare_weights", preparing)
    banner = []
    startup.weights_fetcher(None, torch.device("cpu"), banner.append)()
    assert banner == [f"{step.describe()}. {RESTART_NOTE}", None]
    (tmp_path / "no-storage").mkdir()   # storage attached: the note goes
    banner.clear()
    startup.weights_fetcher(None, torch.device("cpu"), banner.append)()
    assert banner == [step.describe(), None]
