"""The app's start: its device (one parser, falco.device.resolve_device, for the app, the command lines and the
pipeline) and what a failed load of the weights does (falco.ui.engine, falco.ui.startup)."""

import errno
import logging
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import gradio as gr
import httpx
import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from falco.config import DEFAULT_WEIGHTS_REPO, WEIGHTS_REPO_ENV
from falco.device import app_device, resolve_device
from falco.errors import FalcoError, HubUnavailableError, WeightsError
from falco.ui import engine, messages, page, startup
from falco.weights import ARTIFACTS, MANIFEST_NAME, Artifact, Manifest, fetch_weights, prepare
from falco.weights.hub import is_published

ROOT = Path(__file__).resolve().parents[1]


def machine_with_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_app_device_is_the_one_asked_for_else_cuda_on_zerogpu_else_the_default(monkeypatch):
    machine_with_gpus(monkeypatch, 2)
    assert str(app_device("cpu", zerogpu=True)) == "cpu"
    assert str(app_device("cuda:1", zerogpu=False)) == "cuda:1"
    assert str(app_device("", zerogpu=False)) == str(app_device(None, zerogpu=False)) == str(resolve_device()) == "cuda"
    machine_with_gpus(monkeypatch, 0)
    assert str(app_device(None, zerogpu=True)) == "cuda"         # ZeroGPU lends the GPU per run: none visible yet
    assert str(app_device("cuda:1", zerogpu=True)) == "cuda:1"
    assert str(app_device(None, zerogpu=False)) == str(resolve_device()) == "cpu"


@pytest.mark.parametrize("ask", [lambda: app_device("tpu9", zerogpu=False), lambda: resolve_device("tpu9")])
def test_unknown_device_is_one_line_that_says_what_is_expected(ask):
    with pytest.raises(FalcoError) as refused:
        ask()
    assert str(refused.value) == "Unknown device 'tpu9': expected e.g. cpu, cuda or cuda:1."


@pytest.mark.parametrize("gpus, device, reason", [(0, "cuda", "finds no CUDA GPU"), (0, "cuda:0", "finds no CUDA GPU"),
                                                  (2, "cuda:2", "has 2 CUDA GPU(s), cuda:0 to cuda:1"),
                                                  (1, torch.device("cuda", 3), "has 1 CUDA GPU(s), cuda:0 to cuda:0")])
def test_a_gpu_this_machine_lacks_is_refused_in_one_line(monkeypatch, gpus, device, reason):
    machine_with_gpus(monkeypatch, gpus)
    for ask in (lambda: resolve_device(device), lambda: app_device(str(device), zerogpu=False)):
        with pytest.raises(FalcoError) as refused:
            ask()
        line = str(refused.value)
        assert line.startswith(f"Device '{device}' is not available") and reason in line and "\n" not in line
    assert resolve_device(device, present=False) == torch.device(device)


def run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          check=False)



# --- A failed load: final (stop the app) or the Hub failing for now (the page stays, the next run retries) --------
@pytest.fixture
def online(monkeypatch):
    """As if HF_HUB_OFFLINE were unset, whatever this run's environment says (offline, missing files are final)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def hub_error(cls, status: int):
    return cls(f"{status}", response=httpx.Response(status, request=httpx.Request("HEAD", "https://hub.test/x")))


@pytest.mark.parametrize("raised, final", [
    (LocalEntryNotFoundError("no connection and not in the cache"), False),
    (httpx.ConnectError("connection refused"), False),
    (hub_error(HfHubHTTPError, 503), False),
    (hub_error(HfHubHTTPError, 429), False),
    (hub_error(HfHubHTTPError, 400), True),
    (hub_error(RepositoryNotFoundError, 404), True),
    (hub_error(RevisionNotFoundError, 404), True),
    (hub_error(RemoteEntryNotFoundError, 404), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
])
def test_hub_failures_for_now_are_retried_the_others_are_final(monkeypatch, online, raised, final):
    def download(*args, **kwargs):
        raise raised
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)   # falco.weights imports it when it downloads
    with pytest.raises(WeightsError) as failed:
        fetch_weights("someone/falco-weights", names=("fake_bank",), progress=False)
    assert failed.value.__cause__ is raised and engine.load_failure_is_final(failed.value) == final


def test_offline_mode_without_the_files_is_final(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    err = WeightsError("HF_HUB_OFFLINE is set and manifest.json is not in the cache")
    err.__cause__ = LocalEntryNotFoundError("offline")
    assert engine.load_failure_is_final(err)


def test_bad_local_weights_and_repo_ids_are_final(tmp_path):
    (tmp_path / "empty").mkdir()
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    (mismatched / ARTIFACTS["fake_bank"]).write_bytes(b"not the published bytes")
    Manifest(None, None, {"fake_bank": Artifact("fake_bank", ARTIFACTS["fake_bank"], 23, "0" * 64)}).write(
        mismatched / MANIFEST_NAME)
    for source, reason in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "has no"),
                           (mismatched, "does not match its manifest"), ("not a/repo id", "neither")):
        with pytest.raises(WeightsError, match=reason) as failed:
            fetch_weights(str(source), names=("fake_bank",), progress=False)
        assert engine.load_failure_is_final(failed.value)
    assert not engine.load_failure_is_final(RuntimeError("a bug: logged in full and retried"))


def wait_for_load() -> None:
    for thread in threading.enumerate():
        if thread.name == "falco-load":
            thread.join()


def test_a_failed_load_tells_visitors_nothing_of_the_server_and_the_log_why(caplog, online):
    attempts = []

    def factory():
        attempts.append(1)
        if len(attempts) == 1:
            raise HubUnavailableError("Cannot reach the Hub to download manifest.json; the cache /srv/secret/hub lacks "
                                      "it.") from LocalEntryNotFoundError("no connection")
        return "engine"

    loader = engine.EngineLoader(factory, final=engine.load_failure_is_final)
    with caplog.at_level(logging.WARNING, logger="falco.ui.engine"):
        with pytest.raises(FalcoError) as failed:
            loader.get()
    assert str(failed.value) == messages.LOAD_FAILED_MESSAGE and loader.status() == ("failed", str(failed.value))
    assert "/srv/secret" not in str(failed.value) and "/srv/secret/hub lacks it" in caplog.text
    assert loader.final_failure is None and loader.get() == "engine" and loader.status()[0] == "ready"


def test_a_final_failure_is_not_retried_and_the_loading_thread_logs_it(caplog):
    attempts = []
    bad = WeightsError("/srv/weights/e4e.safetensors does not match its manifest.")

    def factory():
        attempts.append(1)
        raise bad

    loader = engine.EngineLoader(factory, final=engine.load_failure_is_final)
    with caplog.at_level(logging.ERROR, logger="falco.ui.engine"):
        loader.start()
        wait_for_load()
    assert loader.final_failure is bad and "/srv/weights/e4e.safetensors does not match" in caplog.text
    with pytest.raises(FalcoError, match=messages.LOAD_FAILED_MESSAGE):
        loader.get()
    assert len(attempts) == 1 and loader.status() == ("failed", messages.LOAD_FAILED_MESSAGE)


# --- start_app: a final failure stops it (before serving where known by then); the Hub failing does not --------
@pytest.fixture
def served_pages(monkeypatch):
    """The pages start_app launched; none blocks the test's thread."""
    pages = []
    launch = page.launch_app
    monkeypatch.setattr(page, "launch_app", lambda demo, *a, **k: pages.append(demo) or launch(demo, *a, **k))
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda demo: None)
    yield pages
    for demo in pages:
        demo.close()


def test_weights_found_bad_before_the_page_is_served_stop_start_app(tmp_path, monkeypatch, served_pages):
    build = page.build_app

    def build_once_fetched(*args, **kwargs):   # the fetch of an empty folder ends at once; made certain here
        for thread in threading.enumerate():
            if thread.name == "falco-fetch":
                thread.join()
        return build(*args, **kwargs)
    monkeypatch.setattr(page, "build_app", build_once_fetched)
    with pytest.raises(WeightsError, match="has no"):
        startup.start_app(weights=str(tmp_path), device="cpu", host="127.0.0.1", quiet=True)
    assert served_pages == []


@pytest.mark.slow
def test_weights_found_bad_while_building_close_the_page(tmp_path, tiny_weights, served_pages):
    for path in tiny_weights.iterdir():   # no manifest, so only building finds the damaged file
        if path.name != MANIFEST_NAME:
            (tmp_path / path.name).symlink_to(path)
    (tmp_path / ARTIFACTS["e4e"]).unlink()
    (tmp_path / ARTIFACTS["e4e"]).write_bytes((tiny_weights / ARTIFACTS["e4e"]).read_bytes()[:1000])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        startup.start_app(weights=str(tmp_path), device="cpu", host="127.0.0.1", quiet=True)
    assert len(served_pages) == 1 and not served_pages[0].is_running


def test_the_hub_failing_keeps_the_page_up(monkeypatch, online, served_pages):
    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("no connection and not in the cache")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    demo, app = startup.start_app(weights="someone/falco-weights", device="cpu", host="127.0.0.1", quiet=True)
    assert served_pages == [demo] and demo.is_running
    with urllib.request.urlopen(demo.local_url, timeout=30) as page:
        assert page.status == 200
    assert app.loader.status() == ("failed", messages.LOAD_FAILED_MESSAGE) and app.loader.final_failure is None
    assert messages.LOAD_FAILED_MESSAGE in app.status_text()


@pytest.mark.slow
def test_app_stops_in_one_line_on_a_weights_folder_that_does_not_exist(tmp_path):
    done = run_app("--weights", str(tmp_path / "nope"))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [f"app.py: The weights folder {tmp_path / 'nope'} does not exist."]


# --- A first start with nothing published: the set prepared from the official checkpoints ---------------------
def test_only_the_project_repo_unpinned_is_unpublished(tmp_path):
    assert not is_published(None) and not is_published(DEFAULT_WEIGHTS_REPO)   # weights/manifest.json pins nothing
    assert is_published(str(tmp_path)) and is_published("someone/falco-weights")
    assert is_published(f"{DEFAULT_WEIGHTS_REPO}@{'0' * 40}")   # a revision asked for is tried as it is
    pinned = Manifest(DEFAULT_WEIGHTS_REPO, "1" * 40, {name: Artifact(name, filename, 1, "0" * 64)
                                                        for name, filename in ARTIFACTS.items()})
    assert is_published(None, manifest=pinned)


class HeldPreparation:
    """prepare_weights as a first start runs it: reports a download, then waits to be let go; the set it 'builds'
    is the tiny random one."""

    def __init__(self, folder: Path):
        self.folder, self.reported, self.go, self.calls = folder, threading.Event(), threading.Event(), 0

    def __call__(self, device=None, progress=None, **kwargs):
        self.calls += 1
        progress(prepare.PrepareProgress("downloading", "ArcFace", 2, 5, 0.48))
        self.reported.set()
        assert self.go.wait(60)
        return self.folder


@pytest.mark.slow
def test_a_first_start_serves_the_page_says_what_it_prepares_then_becomes_usable(monkeypatch, tiny_weights,
                                                                                 served_pages):
    preparing = HeldPreparation(tiny_weights)
    monkeypatch.setattr(startup, "prepare_weights", preparing)
    monkeypatch.delenv(WEIGHTS_REPO_ENV, raising=False)
    demo, app = startup.start_app(weights=None, device="cpu", host="127.0.0.1", quiet=True, prevent_thread_lock=True)
    assert preparing.reported.wait(60)
    with urllib.request.urlopen(demo.local_url, timeout=30) as served:
        assert served.status == 200   # the page is up while the weights are prepared
    line = "Preparing the models on first start: downloading ArcFace (2 of 5), 48%"
    assert app.loader.status() == ("loading", line) and line in app.status_text()
    preparing.go.set()
    assert app.loader.get().source == str(tiny_weights)   # usable by itself, from the prepared folder
    assert app.loader.status()[0] == "ready" and preparing.calls == 1


def test_a_named_set_is_never_prepared(monkeypatch, tiny_weights):
    monkeypatch.setattr(startup, "prepare_weights", lambda **kwargs: pytest.fail("prepared"))
    progress = engine.LoadProgress()
    paths = startup.weights_fetcher(str(tiny_weights), torch.device("cpu"), progress.report)()
    assert paths.source == str(tiny_weights) and progress.line is None
