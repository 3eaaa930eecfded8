"""A first start end to end, offline: the official files (tiny networks in the official containers, dlib's real
models) come from a local server that answers like the Hub and like GitHub's release downloads.  A dead source,
bytes other than the pinned ones and a file of the wrong layout each give way to the next source; the app
prepares the set, serves, anonymizes; a second start uses the prepared set without the network.  The banner
reads forward and the prepared set records the source that served each file.  With persistent storage (a
writable "/data": a temporary folder here) the set goes there by itself, the bank grows beside it while the app is
idle, and a restart that lost everything else finds both."""

import functools
import shutil
from dataclasses import replace

import pytest
import torch
from gradio_client import Client, handle_file

from falco.config import BANK_GROW_TO_ENV, PERSISTENT_ROOT_ENV, PREPARED_WEIGHTS_ENV, WEIGHTS_REPO_ENV
from falco.models.random_weights import TINY_CONFIGS
from falco.ui import startup
from falco.weights import ARTIFACTS, MANIFEST_NAME, Manifest, official, prepare
from falco.weights.growth import growth_folder
from falco.weights.manifest import MODEL_CARD_NAME, sha256_file
from falco.weights.official import Source
from tests.fake_hub import COMMIT, FakeHub
from tests.test_prepare import assert_banner_reads_forward

# A served app, subprocesses of `python app.py` and whole runs: out of the quick loop (README "Tests").
pytestmark = pytest.mark.slow


@pytest.fixture
def server(official_files):
    files = {name: path.read_bytes() for name, path in official_files.items()}
    hub = FakeHub({"good/e4e": {"e4e_ffhq_encode.pt": files["e4e"]},
                   "mirror/e4e": {"e4e_ffhq_encode.pt": files["e4e"]},
                   "wrong-layout/arcface": {"model_ir_se50.pth": files["farl"]},   # FaRL's file under ArcFace's name
                   "good/arcface": {"model_ir_se50.pth": files["arcface"]},
                   "good/dlib": {official_files["dlib_landmarks"].name: files["dlib_landmarks"]}},
                  urls={"/files/FaRL.pth": files["farl"],
                        f"/files/{official_files['dlib_recognition'].name}": files["dlib_recognition"]})
    yield hub
    hub.close()


@pytest.fixture
def official_sources(server, official_files, monkeypatch):
    """The catalogue pointed at the local server; each file's first sources fail in another way."""
    sources = {
        "e4e": (Source("hub", "gone/e4e:e4e_ffhq_encode.pt"),                       # no such repo
                Source("hub", "mirror/e4e:e4e_ffhq_encode.pt", sha256="0" * 64),    # other bytes than pinned
                Source("hub", "good/e4e:e4e_ffhq_encode.pt")),
        "arcface": (Source("hub", "wrong-layout/arcface:model_ir_se50.pth"),
                    Source("hub", "good/arcface:model_ir_se50.pth")),
        "farl": (Source("url", server.url("/files/FaRL.pth")),),
        "dlib_landmarks": (Source("hub", f"good/dlib:{official_files['dlib_landmarks'].name}"),),
        "dlib_recognition": (Source("url", server.url(f"/files/{official_files['dlib_recognition'].name}")),),
    }
    for name, tried in sources.items():
        monkeypatch.setitem(official.OFFICIAL_FILES, name, replace(official.OFFICIAL_FILES[name], sources=tried))
    return sources


def test_a_first_start_prepares_serves_anonymizes_and_the_second_needs_no_network(
        server, official_sources, astronaut, tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_REPO_ENV, raising=False)   # the project's repo, which nothing pins yet
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data = tmp_path / "data"   # a Space's persistent storage
    data.mkdir()
    monkeypatch.setenv(PERSISTENT_ROOT_ENV, str(data))
    monkeypatch.setenv(PREPARED_WEIGHTS_ENV, "")   # unset (and set back after the test): the app chooses
    monkeypatch.setenv(BANK_GROW_TO_ENV, "12")
    monkeypatch.setattr(startup, "prepare_weights",
                        functools.partial(prepare.prepare_weights, configs=TINY_CONFIGS, bank_size=8))
    prepared = data / "falco" / "prepared-weights"

    demo, app = startup.start_app(weights=None, device="cpu", host="127.0.0.1", quiet=True, prevent_thread_lock=True)
    try:
        pipeline = app.loader.get()
        assert pipeline.source == str(prepared)
        asked_for = {path.split("/resolve/")[0] for _, _, path in server.requests}
        assert {"/gone/e4e", "/mirror/e4e", "/wrong-layout/arcface"} <= asked_for   # tried, then refused
        assert not prepared.with_name("prepared-weights.partial").exists()
        assert app.loader.grower.done.wait(60) and len(pipeline.bank) == 12   # grown while idle, beside the set
        assert "The fake bank holds 12 fakes." in app.status_text()
        photo, _, record, _ = Client(demo.local_url, verbose=False).predict(
            handle_file(str(astronaut)), "all", "0", 1, 0.01, 10.0, 0.1, 0, False, api_name="/anonymize")
        assert [f["face"] for f in record["faces"]] == [1]
        assert record["params"]["weights"] == "local folder prepared-weights"
    finally:
        app.loader.grower.stop()
        demo.close()
    assert prepare.find_prepared(prepared) == prepared

    # A restart: the Space's disk is wiped but /data; nothing is asked of the network.
    shutil.rmtree(tmp_path / "hf", ignore_errors=True)
    parts = sorted(growth_folder(prepared).glob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    asked = len(server.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    demo, app = startup.start_app(weights=None, device="cpu", host="127.0.0.1", quiet=True, prevent_thread_lock=True)
    try:
        pipeline = app.loader.get()
        assert pipeline.source == str(prepared)
        assert app.loader.grower.done.wait(60) and len(pipeline.bank) == 12   # the grown rows, found again
    finally:
        app.loader.grower.stop()
        demo.close()
    assert len(server.requests) == asked   # the second start asked the network nothing
    assert [p.stat().st_mtime_ns for p in parts] == stamps   # and made no fake again


def test_a_first_start_banner_reads_forward_and_the_set_names_each_source(
        server, official_sources, official_files, tmp_path, monkeypatch):
    """The preparation the app runs (its banner texts as the page gets them), against sources that fail first."""
    monkeypatch.delenv(WEIGHTS_REPO_ENV, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv(PREPARED_WEIGHTS_ENV, str(tmp_path / "prepared"))
    events, banner = [], []

    def preparing(progress, **kwargs):
        return prepare.prepare_weights(configs=TINY_CONFIGS, bank_size=8, **kwargs,
                                       progress=lambda event: (events.append(event), progress(event)))
    monkeypatch.setattr(startup, "prepare_weights", preparing)
    paths = startup.weights_fetcher(None, torch.device("cpu"), banner.append)()
    assert paths.source == str(tmp_path / "prepared") and all(paths[name].is_file() for name in ARTIFACTS)
    assert_banner_reads_forward(events)
    assert banner == [event.describe() for event in events] + [None]   # None: the banner is taken down

    folder = tmp_path / "prepared"
    manifest = Manifest.load(folder / MANIFEST_NAME)
    assert manifest.built.by == prepare.FIRST_START and prepare.FIRST_START in manifest.note
    assert prepare.PREPARE_COMMAND not in manifest.note
    # ArcFace's first source held a file of another layout, e4e's first two were gone and other bytes.
    arcface, e4e = manifest.sources["arcface"], manifest.sources["e4e"]
    assert (arcface.kind, arcface.location, arcface.revision) == ("hub", "good/arcface:model_ir_se50.pth", COMMIT)
    assert (e4e.location, e4e.revision, e4e.artifacts) == ("good/e4e:e4e_ffhq_encode.pt", COMMIT, ("generator", "e4e"))
    assert (e4e.size, e4e.sha256) == (official_files["e4e"].stat().st_size,
                                      sha256_file(official_files["e4e"]))
    assert manifest.sources["farl"].location == server.url("/files/FaRL.pth")
    card = (folder / MODEL_CARD_NAME).read_text()
    arcface_line = next(line for line in card.splitlines() if line.startswith(f"- `{ARTIFACTS['arcface']}`"))
    assert f"Source: the Hub repo `good/arcface`, file `model_ir_se50.pth` at revision `{COMMIT}`" in arcface_line
    assert "wrong-layout" not in card and f"by {prepare.FIRST_START} (falco " in card
