"""Weights: manifest, pinned + verified Hub downloads against a local Hub, random sets.

The download tests run ``python -m falco.weights fetch`` in a subprocess with HF_ENDPOINT
pointing at a local server that answers like the Hub's /resolve endpoint (small files
served directly, LFS files redirected to a CDN on another origin), and HF_HOME in a tmp
dir: the real huggingface_hub code path, configured the way a user configures it.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from falco.errors import WeightsError
from falco.models import NETWORKS
from falco.models.networks import load_networks
from falco.models.random_weights import (
    NETWORK_CLASSES,
    OFFICIAL_PREFIX,
    TINY_CONFIGS,
    random_network,
)
from falco.weights import (
    ARTIFACTS,
    MANIFEST_NAME,
    Manifest,
    fetch_weights,
    parse_source,
)
from falco.weights.assemble import copy_dlib_model
from falco.weights.manifest import PROJECT_MANIFEST, Build, Origin
from falco.weights.model_card import model_card
from falco.weights.publish import upload_weights
from falco.weights.random_set import make_random_weights
from tests.fake_hub import COMMIT, REPO, FakeHub

ROOT = Path(__file__).resolve().parents[1]
SERVED = ("generator", "arcface", "farl")   # enough to exercise every path, cheap to build and serve


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-weights")
    make_random_weights(folder, tiny=True, names=SERVED)
    return folder


@pytest.fixture
def hub(tiny_folder):
    server = FakeHub.from_folder(tiny_folder)
    yield server
    server.close()


# `python -m falco.weights` with huggingface_hub's waits between retries skipped: it retries a connection that fails
# five times, sleeping 1 + 2 + 4 + 8 + 8 s; the retries and the final error stay as they are.
WITHOUT_BACKOFF_WAITS = ("import runpy, types, huggingface_hub.utils._http as http; "
                         "http.time = types.SimpleNamespace(**{**vars(http.time), 'sleep': lambda seconds: None}); "
                         "runpy.run_module('falco.weights', run_name='__main__', alter_sys=True)")


def fetch(hub_endpoint: str, hf_home: Path, *args: str, offline: bool = False,
          backoff_waits: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "FALCO_"))}
    env.update(HF_ENDPOINT=hub_endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_OFFLINE="1" if offline else "0")
    program = ["-m", "falco.weights"] if backoff_waits else ["-c", WITHOUT_BACKOFF_WAITS]
    command = [sys.executable, *program, "fetch", "--no-progress", "--names", *SERVED, *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def fetched_paths(result: subprocess.CompletedProcess) -> dict[str, Path]:
    assert result.returncode == 0, result.stderr
    return {name: Path(path) for name, path in (line.split(": ", 1) for line in result.stdout.splitlines())}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ")
    return lines[-1]


def pinned_manifest(tiny_folder: Path, path: Path) -> Path:
    manifest = Manifest.load(tiny_folder / MANIFEST_NAME)
    return replace(manifest, repo_id=REPO, revision=COMMIT).write(path)


@pytest.mark.slow
def test_first_download_then_cache_hit(hub, tiny_folder, tmp_path):
    manifest = Manifest.load(tiny_folder / MANIFEST_NAME)
    paths = fetched_paths(fetch(hub.endpoint, tmp_path, "--weights", REPO))
    assert set(paths) == set(SERVED)
    for name, path in paths.items():
        # The standard cache layout, pinned to the commit the repo's manifest was read from.
        assert path.parent == tmp_path / "hub" / "models--test-user--falco-tiny" / "snapshots" / COMMIT
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest.artifacts[name].sha256
    assert len(hub.gets("cdn")) == len(SERVED)
    gets_before = len(hub.gets())

    again = fetched_paths(fetch(hub.endpoint, tmp_path, "--weights", REPO))
    assert again == paths
    assert len(hub.gets()) == gets_before, "a cached file was transferred again"


@pytest.mark.slow
def test_pinned_manifest_downloads_at_its_revision_and_then_needs_no_request(hub, tiny_folder, tmp_path):
    pinned = pinned_manifest(tiny_folder, tmp_path / "pinned.json")
    paths = fetched_paths(fetch(hub.endpoint, tmp_path / "hf", "--weights", REPO, "--manifest", str(pinned)))
    assert not any(MANIFEST_NAME in p for _, _, p in hub.requests), "pinned hashes come from the project"
    downloads = [p for o, _, p in hub.requests if o == "hub"]
    assert downloads and all(f"/resolve/{COMMIT}/" in p for p in downloads)
    assert all(p.parent.name == COMMIT for p in paths.values())
    count = len(hub.requests)
    assert fetched_paths(fetch(hub.endpoint, tmp_path / "hf", "--weights", REPO, "--manifest", str(pinned))) == paths
    assert len(hub.requests) == count


@pytest.mark.slow
def test_corrupted_download_is_detected_and_removed(hub, tiny_folder, tmp_path):
    expected = Manifest.load(tiny_folder / MANIFEST_NAME).artifacts["arcface"].sha256
    hub.fail[f"{REPO}/arcface.safetensors"] = "corrupt"
    actual = hashlib.sha256(hub.content(f"{REPO}/arcface.safetensors")).hexdigest()
    error = one_line_error(fetch(hub.endpoint, tmp_path, "--weights", REPO))
    assert "arcface.safetensors" in error and expected in error and actual in error
    blobs = tmp_path / "hub" / "models--test-user--falco-tiny" / "blobs"
    assert not (blobs / actual).exists()
    assert not (blobs.parent / "snapshots" / COMMIT / "arcface.safetensors").exists()

    hub.fail.clear()   # the next run downloads the file anew
    paths = fetched_paths(fetch(hub.endpoint, tmp_path, "--weights", REPO))
    assert hashlib.sha256(paths["arcface"].read_bytes()).hexdigest() == expected


def test_missing_file_is_reported(hub, tmp_path):
    del hub.files["farl.safetensors"]
    error = one_line_error(fetch(hub.endpoint, tmp_path, "--weights", REPO))
    assert "farl.safetensors is missing" in error and REPO in error


def test_missing_repo_is_reported(hub, tmp_path):
    error = one_line_error(fetch(hub.endpoint, tmp_path, "--weights", "nobody/no-such-weights"))
    assert "nobody/no-such-weights was not found" in error


def test_unreachable_endpoint_is_reported(tmp_path):
    with socket.socket() as sock:   # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = fetch(closed, tmp_path, "--weights", REPO, backoff_waits=False)
    assert "Retrying in" in result.stderr   # huggingface_hub did retry (its log), without the waits
    error = one_line_error(result)
    assert "Cannot reach" in error and closed in error


@pytest.mark.slow
def test_offline_mode_is_served_from_the_cache(hub, tmp_path):
    paths = fetched_paths(fetch(hub.endpoint, tmp_path, "--weights", REPO))
    count = len(hub.requests)
    assert fetched_paths(fetch(hub.endpoint, tmp_path, "--weights", REPO, offline=True)) == paths
    assert len(hub.requests) == count

    error = one_line_error(fetch(hub.endpoint, tmp_path / "empty", "--weights", REPO, offline=True))
    assert "HF_HUB_OFFLINE" in error
    assert len(hub.requests) == count


def test_no_disk_space_is_reported_before_downloading(tiny_folder, tmp_path, monkeypatch):
    from collections import namedtuple

    import huggingface_hub.constants

    import falco.weights.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(falco.weights.hub.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    pinned = pinned_manifest(tiny_folder, tmp_path / "pinned.json")
    with pytest.raises(WeightsError, match="Not enough disk space for generator.safetensors"):
        fetch_weights(REPO, names=["generator"], progress=False, manifest=pinned)


def test_local_folder_stands_in_for_the_repo(tiny_folder, tmp_path):
    paths = fetch_weights(str(tiny_folder), names=SERVED)
    assert all(paths[name] == tiny_folder / ARTIFACTS[name] for name in SERVED)
    with pytest.raises(KeyError):
        paths["fake_bank"]

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (*(ARTIFACTS[n] for n in SERVED), MANIFEST_NAME):
        (copy / name).write_bytes((tiny_folder / name).read_bytes())
    damaged = bytearray((copy / "farl.safetensors").read_bytes())
    damaged[-1] ^= 0xFF
    (copy / "farl.safetensors").write_bytes(bytes(damaged))
    with pytest.raises(WeightsError, match="does not match its manifest"):
        fetch_weights(str(copy), names=["farl"])
    assert (copy / "farl.safetensors").exists(), "a user's own folder is never modified"
    with pytest.raises(WeightsError, match="lists no fake_bank"):
        fetch_weights(str(copy), names=["fake_bank"])
    (copy / "generator.safetensors").unlink()
    with pytest.raises(WeightsError, match="has no generator.safetensors"):
        fetch_weights(str(copy), names=["generator"])


def test_upload_pins_the_manifest_to_the_new_commit(tiny_folder, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload_folder", repo_id, Path(folder_path)))
            return SimpleNamespace(oid=COMMIT)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    pinned = upload_weights(tiny_folder, REPO, manifest_path=tmp_path / "manifest.json")
    assert calls == [("create_repo", REPO, False, True), ("upload_folder", REPO, tiny_folder)]
    assert Manifest.load(tmp_path / "manifest.json") == pinned
    assert (pinned.repo_id, pinned.revision) == (REPO, COMMIT) and pinned.pins(SERVED)

    copy = tmp_path / "damaged"
    copy.mkdir()
    for path in tiny_folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "arcface.safetensors").write_bytes(b"not the manifest's bytes")
    with pytest.raises(WeightsError, match="does not match its manifest"):
        upload_weights(copy, REPO, manifest_path=tmp_path / "other.json")
    assert len(calls) == 2 and not (tmp_path / "other.json").exists()


def test_dlib_models_are_decompressed_when_bz2(tmp_path):
    import bz2
    payload = bytes(range(256)) * 100
    (tmp_path / "model.dat.bz2").write_bytes(bz2.compress(payload))
    copy_dlib_model(tmp_path / "model.dat.bz2", tmp_path / "model.dat")
    assert (tmp_path / "model.dat").read_bytes() == payload


def test_source_parsing():
    assert parse_source("user/name@v1.0").repo_id == "user/name"
    assert parse_source("user/name@v1.0").revision == "v1.0"
    assert parse_source("user/name").revision is None
    with pytest.raises(WeightsError, match="does not exist"):
        parse_source("./no/such/folder")
    with pytest.raises(WeightsError, match="neither a weights folder nor a Hub repo id"):
        parse_source("not a repo")


def test_source_defaults_to_config_and_env(monkeypatch):
    from falco.config import DEFAULT_WEIGHTS_REPO, WEIGHTS_REPO_ENV
    monkeypatch.delenv(WEIGHTS_REPO_ENV, raising=False)
    assert parse_source(None).repo_id == DEFAULT_WEIGHTS_REPO
    monkeypatch.setenv(WEIGHTS_REPO_ENV, "someone/their-weights@abc")
    assert (parse_source(None).repo_id, parse_source(None).revision) == ("someone/their-weights", "abc")


def test_a_manifest_keeps_each_files_source_and_what_built_it_and_reads_without_them(tmp_path):
    plain = replace(Manifest.unpublished(), note="hashes of a folder")
    plain.write(tmp_path / "plain.json")
    assert not {"sources", "built"} & set(json.loads((tmp_path / "plain.json").read_text()))   # bytes as before
    assert Manifest.load(tmp_path / "plain.json") == plain and plain.origin_of("farl") is None
    farl = Origin("hub", "someone/farl-clip:model.safetensors", COMMIT, "transformers-clip", 12, "a" * 64, ("farl",))
    recorded = replace(plain, sources={"farl": farl}, built=Build("the app's first start", "0.1.0", "cpu", 40))
    assert Manifest.load(recorded.write(tmp_path / "recorded.json")) == recorded
    assert recorded.origin_of("farl") == farl and recorded.origin_of("arcface") is None
    assert farl.describe() == (f"the Hub repo `someone/farl-clip`, file `model.safetensors` at revision `{COMMIT}` "
                               f"(the weights in transformers' CLIP layout), 12 bytes, sha256 `{'a' * 64}`")
    assert "the app's first start (falco 0.1.0; the fake bank of 40 fakes built on cpu)" in model_card(recorded)


def test_project_manifest_lists_every_artifact():
    manifest = Manifest.load(PROJECT_MANIFEST)
    assert {n: a.filename for n, a in manifest.artifacts.items()} == ARTIFACTS
    parse_source(manifest.repo_id)
    if manifest.revision is not None:   # once published, the pins must be complete
        assert manifest.pins(ARTIFACTS)


@pytest.mark.slow
def test_complete_tiny_set_loads(tiny_weights):
    import dlib
    import torch

    from falco.bank import FakeBank
    from falco.models import io

    manifest = Manifest.load(tiny_weights / MANIFEST_NAME)
    assert set(manifest.artifacts) == set(ARTIFACTS) and manifest.revision is None
    assert "noise" in (tiny_weights / "README.md").read_text().lower()
    paths = fetch_weights(str(tiny_weights))   # checks every hash of the folder's manifest
    generator, mean_w = io.load_generator(paths.generator)
    e4e, latent_avg = io.load_e4e(paths.e4e)
    arcface, farl = io.load_arcface(paths.arcface), io.load_farl(paths.farl)
    assert latent_avg.shape == (generator.num_ws, generator.style_dim) == (e4e.config["n_styles"], mean_w.shape[0])
    assert torch.equal(latent_avg[0], mean_w)
    bank = FakeBank.load(paths.fake_bank)
    assert bank.w.shape[1] == generator.style_dim
    assert bank.embeddings.shape[1] == farl.config["embed_dim"]
    with torch.no_grad():
        image = generator(latent_avg[None])
        codes = e4e(torch.nn.functional.interpolate(image, size=256))
        assert codes.shape == (1, generator.num_ws, generator.style_dim)
        assert arcface(torch.zeros(1, 3, 112, 112)).shape == (1, 512)
    dlib.shape_predictor(str(paths.dlib_landmarks))
    dlib.face_recognition_model_v1(str(paths.dlib_recognition))


def test_networks_named_are_loaded_frozen(tiny_weights):
    import torch

    names = ("generator", "farl")
    nets = load_networks(fetch_weights(str(tiny_weights), names=names), torch.device("cpu"), names=names)
    assert nets.e4e is None and nets.arcface is None and nets.latent_avg is None
    assert nets.mean_w.shape == (nets.generator.style_dim,)
    assert not any(p.requires_grad for net in (nets.generator, nets.farl) for p in net.parameters())
    assert not nets.generator.training and not nets.farl.training


@pytest.mark.parametrize("name", NETWORKS)
def test_random_network_is_the_seeded_network_built_without_init(name):
    """Built on the meta device: the same weights as an ordinary build loaded with the seeding rule, nothing left
    on the meta device, frozen."""
    import torch

    from falco.models.random_weights import seeded_state_dict

    model = random_network(name, tiny=True)
    ordinary = NETWORK_CLASSES[name](**TINY_CONFIGS[name])
    ordinary.load_state_dict(seeded_state_dict(ordinary.state_dict(), prefix=OFFICIAL_PREFIX[name]), strict=True)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    expected = ordinary.state_dict()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in model.state_dict().items())
    assert model.state_dict().keys() == expected.keys()
    assert not any(p.requires_grad for p in model.parameters())


def test_fetching_needs_neither_torch_nor_the_networks():
    """falco.weights (manifest, hashes, the Hub) imports without torch: the fetch starts while the rest imports."""
    for module in ("falco.weights", "falco.weights.__main__"):   # the package, and the command fetch runs
        check = f"import sys, {module}; print(sorted(m for m in ('torch', 'dlib', 'gradio') if m in sys.modules))"
        done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "[]", (module, done.stderr)
