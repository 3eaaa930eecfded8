"""falco.weights.official: each official file from a list of sources, with fallback and per-source checks.

In process, against tests/fake_hub.py (Hub repos and plain URLs on a local server): small byte payloads
and custom Source lists, no real weights.  HF_ENDPOINT and HF_HUB_OFFLINE are read at call time.
"""

import hashlib
import socket

import pytest
import torch

from falco.errors import HubUnavailableError, WeightsError
from falco.weights import ARTIFACTS, official
from falco.weights.licences import LICENCES
from falco.weights.official import OFFICIAL_FILES, Source, fetch_official
from tests.fake_hub import FakeHub

PAYLOAD = bytes(range(256)) * 1024   # 256 KiB: several network reads
SHA = hashlib.sha256(PAYLOAD).hexdigest()
OTHER = b"other bytes of the same weights"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    from huggingface_hub import constants
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield server
    server.close()


def offline(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_dead_first_source_falls_through_to_the_second(hub, tmp_path):
    hub.repos.update({"gone/mirror": {}, "live/mirror": {"w.pth": PAYLOAD}})
    hub.urls["/files/w.pth"] = PAYLOAD
    hub.fail["/files/w.pth"] = 404
    sources = (Source("hub", "nobody/no-such-repo:w.pth"), Source("hub", "gone/mirror:w.pth"),
               Source("url", hub.url("/files/w.pth")), Source("hub", "live/mirror:w.pth", sha256=SHA))
    path, source = fetch_official("e4e", tmp_path / "weights", sources=sources)
    assert source == sources[-1] and path.read_bytes() == PAYLOAD
    assert path.name == "w.pth" and (tmp_path / "weights") in path.parents


def test_wrong_sha256_or_size_is_refused_deleted_and_the_next_source_used(hub, tmp_path):
    hub.urls.update({"/files/a.pth": PAYLOAD, "/files/b.pth": PAYLOAD})
    hub.repos["live/mirror"] = {"w.pth": OTHER}
    sources = (Source("url", hub.url("/files/a.pth"), sha256="0" * 64),
               Source("url", hub.url("/files/b.pth"), size=len(PAYLOAD) + 1),
               Source("hub", "live/mirror:w.pth", sha256=hashlib.sha256(OTHER).hexdigest(), size=len(OTHER)))
    path, source = fetch_official("arcface", tmp_path, sources=sources)
    assert source == sources[2] and path.read_bytes() == OTHER
    assert not any(p.name in ("a.pth", "b.pth") for p in tmp_path.rglob("*")), "a refused download was kept"
    assert hub.sent["/files/a.pth"] == hub.sent["/files/b.pth"] == len(PAYLOAD)


def test_a_failing_check_refuses_the_file_and_deletes_it(hub, tmp_path):
    hub.repos.update({"clip/layout": {"model.safetensors": OTHER}, "official/layout": {"w.pth": PAYLOAD}})
    sources = (Source("hub", "clip/layout:model.safetensors", layout="transformers-clip"),
               Source("hub", "official/layout:w.pth"))
    seen = []

    def strict_check(path, source):
        seen.append((path.read_bytes(), source))
        if source.layout != "official":
            raise WeightsError("does not match the FaRL layout: 3 missing keys")

    path, source = fetch_official("farl", tmp_path, check=strict_check, sources=sources)
    assert source == sources[1] and seen == [(OTHER, sources[0]), (PAYLOAD, sources[1])]
    assert not list(tmp_path.rglob("model.safetensors"))


class RunsCode:
    """Unpickled, it would create the marker file: a stand-in for a checkpoint that runs code when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_pickle_that_would_run_code_is_refused_unrun_and_deleted(hub, tmp_path):
    from falco.models import io

    def checkpoint(obj) -> bytes:
        path = tmp_path / "made.pth"
        torch.save(obj, path)
        return path.read_bytes()

    armed = checkpoint({"state_dict": RunsCode(tmp_path / "armed")})
    (tmp_path / "proof.pth").write_bytes(armed)
    torch.load(tmp_path / "proof.pth", weights_only=False)   # the payload is live: a plain unpickler runs it
    assert (tmp_path / "armed").exists()
    marker = tmp_path / "ran"
    hub.repos.update({"evil/mirror": {"w.pth": checkpoint({"state_dict": RunsCode(marker)})},
                      "good/mirror": {"w.pth": checkpoint({"state_dict": {"weight": torch.ones(2)}})}})
    sources = (Source("hub", "evil/mirror:w.pth"), Source("hub", "good/mirror:w.pth"))

    def strict_check(path, source):   # the reader every official loader of falco.models.io starts with
        io._read(path, "farl")

    folder = tmp_path / "weights"
    path, source = fetch_official("farl", folder, check=strict_check, sources=sources)
    assert source == sources[1] and torch.equal(torch.load(path, weights_only=True)["state_dict"]["weight"],
                                                torch.ones(2))
    assert not marker.exists(), "the pickle ran"
    assert not list((folder / "farl").glob("hub--evil*")), "the refused file was kept"
    with pytest.raises(WeightsError, match="cannot be loaded as a plain tensor checkpoint"):
        io.load_farl(tmp_path / "proof.pth")
    assert not marker.exists()


def test_all_sources_failing_name_every_source_and_reason_in_one_line(hub, tmp_path):
    hub.repos["some/mirror"] = {"w.pth": PAYLOAD}
    hub.urls["/files/gone.pth"] = PAYLOAD
    hub.fail["/files/gone.pth"] = 404
    sources = (Source("hub", "nobody/no-such-repo:w.pth"), Source("hub", "some/mirror:missing.pth"),
               Source("url", hub.url("/files/gone.pth")), Source("hub", "some/mirror:w.pth", sha256="0" * 64),
               Source("package", "no_such_package_xyz:models/w.dat"))
    with pytest.raises(WeightsError) as caught:
        fetch_official("e4e", tmp_path, sources=sources)
    message = str(caught.value)
    assert not isinstance(caught.value, HubUnavailableError) and "\n" not in message
    assert message.startswith("No source of e4e_ffhq_encode.pt (e4e) could be used: ")
    reasons = message.split(": ", 1)[1].split("; ")
    assert [r.split(": ", 1)[0] for r in reasons] == [str(s) for s in sources]
    for reason, expected in zip(reasons, ("repo not found", "file not found", "HTTP 404", "does not match the "
                                          "pinned", "package is not installed"), strict=True):
        assert expected in reason


def test_only_the_network_failing_is_reported_as_for_now(hub, tmp_path):
    with socket.socket() as sock:   # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/w.pth"
    hub.urls["/files/busy.pth"] = PAYLOAD
    hub.fail["/files/busy.pth"] = 503
    sources = (Source("url", closed), Source("url", hub.url("/files/busy.pth")))
    with pytest.raises(HubUnavailableError, match="network error.*; .*HTTP 503"):
        fetch_official("farl", tmp_path, sources=sources)


def test_an_unreachable_hub_is_for_now(hub, tmp_path, monkeypatch):
    """huggingface_hub says LocalEntryNotFoundError (a subclass of EntryNotFoundError) after its retries, which
    take about 25 s against a closed port: raised here directly."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub.")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(HubUnavailableError, match="hub some/mirror:w.pth: the Hub could not be reached"):
        fetch_official("e4e", tmp_path, sources=(Source("hub", "some/mirror:w.pth"),))


def test_a_verified_copy_is_reused_offline_without_any_request(hub, tmp_path, monkeypatch):
    hub.repos["live/mirror"] = {"w.pth": PAYLOAD}
    hub.urls["/files/w.pth"] = OTHER
    sources = (Source("url", hub.url("/files/w.pth"), sha256=hashlib.sha256(OTHER).hexdigest()),
               Source("hub", "live/mirror:w.pth", sha256=SHA))
    hub.fail["/files/w.pth"] = 404
    first, source = fetch_official("e4e", tmp_path, sources=sources)
    assert source == sources[1]
    hub.fail.clear()   # the first source is back, but a verified copy is at hand: no request at all
    count = len(hub.requests)
    checked = []
    offline(monkeypatch)
    assert fetch_official("e4e", tmp_path, check=lambda p, s: checked.append(s), sources=sources) == (first, source)
    assert checked == [source] and len(hub.requests) == count

    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE") as caught:
        fetch_official("e4e", tmp_path / "empty", sources=sources)
    assert "skipped" in str(caught.value) and len(hub.requests) == count


def test_a_copy_that_no_longer_verifies_is_fetched_again_from_its_source(hub, tmp_path):
    hub.repos["live/mirror"] = {"w.pth": PAYLOAD}
    sources = (Source("hub", "live/mirror:w.pth", sha256=SHA),)
    path, _ = fetch_official("e4e", tmp_path, sources=sources)
    path.write_bytes(b"damaged on disk")
    gets = len(hub.gets("cdn"))
    assert fetch_official("e4e", tmp_path, sources=sources) == (path, sources[0])
    assert path.read_bytes() == PAYLOAD and len(hub.gets("cdn")) == gets + 1


def test_the_packaged_dlib_model_is_used_offline(monkeypatch, tmp_path):
    offline(monkeypatch)
    path, source = fetch_official("dlib_recognition", tmp_path)   # the real sources and pins
    assert source.kind == "package" and path.name == "dlib_face_recognition_resnet_model_v1.dat"
    assert path.stat().st_size == source.size and not list(tmp_path.iterdir()), "nothing copied"


def test_a_dropped_url_download_resumes_with_a_range_request(hub, tmp_path):
    hub.urls["/files/w.pth"] = PAYLOAD
    hub.cut["/files/w.pth"] = 100_000
    fractions = []
    path, _ = fetch_official("farl", tmp_path, progress=fractions.append,
                             sources=(Source("url", hub.url("/files/w.pth"), sha256=SHA),))
    assert path.read_bytes() == PAYLOAD
    assert hub.ranges == [("/files/w.pth", "bytes=100000-")] and hub.sent["/files/w.pth"] == len(PAYLOAD)
    assert fractions[-1] == 1.0 and fractions == sorted(fractions) and 100_000 / len(PAYLOAD) in fractions


def test_an_interrupted_url_download_resumes_on_the_next_run(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(official, "URL_ATTEMPTS", 1)
    hub.urls["/files/w.pth"] = PAYLOAD
    hub.cut["/files/w.pth"] = 50_000
    sources = (Source("url", hub.url("/files/w.pth"), sha256=SHA),)
    with pytest.raises(HubUnavailableError, match="network error"):
        fetch_official("farl", tmp_path, sources=sources)
    path, _ = fetch_official("farl", tmp_path, sources=sources)
    assert path.read_bytes() == PAYLOAD and not list(tmp_path.rglob("*.incomplete"))
    assert hub.ranges == [("/files/w.pth", "bytes=50000-")] and hub.sent["/files/w.pth"] == len(PAYLOAD)


def test_hub_progress_ends_at_one(hub, tmp_path):
    hub.repos["live/mirror"] = {"w.pth": PAYLOAD}
    fractions = []
    fetch_official("e4e", tmp_path, progress=fractions.append, sources=(Source("hub", "live/mirror:w.pth"),))
    assert len(fractions) >= 2 and fractions[-1] == 1.0
    assert all(f is None or 0 <= f <= 1 for f in fractions)


def test_a_download_reports_its_end_before_the_callers_check(hub, tmp_path):
    """The check converts the file: a download report after it would step the first-start banner back."""
    hub.repos["live/mirror"] = {"w.pth": PAYLOAD}
    fractions, at_check = [], []
    fetch_official("e4e", tmp_path, check=lambda path, source: at_check.extend(fractions),
                   progress=fractions.append, sources=(Source("hub", "live/mirror:w.pth", sha256=SHA),))
    assert at_check and at_check[-1] == 1.0 and fractions == at_check


def test_the_revision_that_served_a_hub_file_is_known(hub, tmp_path):
    from tests.fake_hub import COMMIT
    hub.repos["live/mirror"] = {"w.pth": PAYLOAD}
    hub.urls["/files/w.pth"] = PAYLOAD
    unpinned, pinned = Source("hub", "live/mirror:w.pth"), Source("hub", "live/mirror:w.pth", revision=COMMIT)
    by_url = Source("url", hub.url("/files/w.pth"))
    for source in (unpinned, pinned, by_url):
        fetch_official("e4e", tmp_path, sources=(source,))
    assert official.served_revision(tmp_path, "e4e", unpinned) == COMMIT   # "main" when asked, recorded as served
    assert official.served_revision(tmp_path, "e4e", pinned) == COMMIT
    assert official.served_revision(tmp_path, "e4e", by_url) is None
    assert official.served_revision(tmp_path / "nothing-here", "e4e", unpinned) is None


def test_the_catalogue_has_every_file_with_at_least_two_sources_and_their_terms():
    assert set(OFFICIAL_FILES) == {"e4e", "arcface", "farl", "dlib_landmarks", "dlib_recognition"}
    for name, entry in OFFICIAL_FILES.items():
        assert entry.name == name and len(entry.sources) >= 2
        for source in entry.sources:
            assert source.sha256 is None or len(source.sha256) == 64
    # Origins and licences have one home; every artifact made from these files has its terms there.
    assert set(LICENCES) == set(ARTIFACTS) - {"fake_bank"}
    assert [s.layout for s in OFFICIAL_FILES["farl"].sources] == ["official", "transformers-clip"]
    with pytest.raises(ValueError):
        Source("ftp", "somewhere")
