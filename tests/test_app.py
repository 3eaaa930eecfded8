"""The app served on localhost with tiny random weights: the named API endpoint through
gradio_client, the page handlers, error paths, and two visitors at once."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from PIL import Image
from safetensors.torch import load_file

from falco import serving, ui
from falco.config import AppConfig, OptimConfig

# Few steps, a preview at each: enough to see streaming, quick on a CPU.
TEST_CONFIG = AppConfig(cpu_optim=OptimConfig(steps=3, preview_every=1, loss_on_skip256=True))
API_DEFAULTS = dict(lr=0.01, lambda_id=10.0, lambda_attr=0.1, seed=0, another_fake=False)


@pytest.fixture(scope="module")
def served(tiny_pipeline):
    demo, app = ui.build_app(loader=serving.EngineLoader(lambda: tiny_pipeline), device="cpu", config=TEST_CONFIG)
    _, url, _ = ui.launch_app(demo, TEST_CONFIG, host="127.0.0.1", prevent_thread_lock=True, quiet=True)
    yield app, url
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served[1], verbose=False)


@pytest.fixture(scope="module")
def bad_photos(tmp_path_factory) -> dict[str, Path]:
    """Uploads that must each get a message: a text file, a photo without a face, one too large to open."""
    folder = tmp_path_factory.mktemp("bad-photos")
    paths = {"text": folder / "notes.txt", "no face": folder / "grey.png", "huge": folder / "huge.png"}
    paths["text"].write_text("not a photo")
    Image.new("RGB", (256, 256), (128, 128, 128)).save(paths["no face"])
    Image.new("L", (9000, 9000)).save(paths["huge"])   # 81 Mpx, over FaceConfig.max_image_pixels; ~80 kB on disk
    return paths


def anonymize(client: Client, photo: Path, margins: str = "0", steps: int = 2, faces: str = "all"):
    return client.predict(handle_file(str(photo)), faces, margins, steps, *API_DEFAULTS.values(),
                          api_name="/anonymize")


def outside_faces_equal(result: Path, original: Path) -> bool:
    # Paste-back leaves everything outside the face untouched; the astronaut's face is near the top
    # centre, so the bottom third of the photo must be the original pixel for pixel.
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (result, original))
    return a.shape == b.shape and np.array_equal(a[-170:], b[-170:])


def test_named_endpoint_only(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert list(api["named_endpoints"]) == ["/anonymize"]   # the page's own events are private
    names = [p["parameter_name"] for p in api["named_endpoints"]["/anonymize"]["parameters"]]
    assert names == ["photo", "faces", "margins", "steps", "lr", "lambda_id", "lambda_attr", "seed", "another_fake"]


def test_api_anonymizes_with_several_margins(client, astronaut, tiny_pipeline):
    photo, gallery, record, files = anonymize(client, astronaut, margins="0, 1", steps=2)
    assert outside_faces_equal(Path(photo), astronaut)
    assert not np.array_equal(np.asarray(Image.open(photo)), np.asarray(Image.open(astronaut).convert("RGB")))
    assert [(f["face"], f["margin"]) for f in record["faces"]] == [(1, 0.0), (1, 1.0)]
    assert record["params"]["optim"]["steps"] == 2 and record["params"]["margins"] == [0.0, 1.0]
    captions = [item["caption"] for item in gallery]
    assert captions[:3] == ["Face 1: original", "Face 1: e4e inversion", "Face 1: fake neighbour"]
    assert len(captions) == 5
    by_name = {Path(f).name: Path(f) for f in files}
    assert {"photo_m0.png", "photo_m1.png", "wplus.safetensors", "run.json", "face1_m1_anonymized.png"} <= set(by_name)
    assert json.loads(by_name["run.json"].read_text()) == record   # the download is the API's record
    assert set(record["faces"][0]) == {"face", "margin", "identity_cosine", "recognizer_distance",
                                       "same_person_for_dlib", "fake_index", "fake_seed"}
    codes = load_file(str(by_name["wplus.safetensors"]))
    g = tiny_pipeline.nets.generator
    assert codes["wplus"].shape == (1, 2, g.num_ws, g.style_dim) and codes["margin"].tolist() == [0.0, 1.0]
    assert codes["face"].tolist() == [1] and codes["fake_index"].tolist() == [record["faces"][0]["fake_index"]]
    # Rows outside the optimised ones are the e4e inversion's.
    start, stop = OptimConfig().trained_rows
    inversion = codes["wplus_inversion"][:, None].expand_as(codes["wplus"])
    assert torch.equal(codes["wplus"][..., :start, :], inversion[..., :start, :])
    assert not torch.equal(codes["wplus"][..., start:stop, :], inversion[..., start:stop, :])


def test_ui_run_streams_previews_then_results(served, astronaut):
    app, _ = served
    c = app.components
    session = ui.Session()
    faces_view, picker, text, session = app.on_photo(str(astronaut), session)
    assert "1 usable" in text and picker.value == [0] and faces_view.size == (512, 512)
    assert session.detections_for(str(astronaut)) is not None
    updates = list(app.run(str(astronaut), [0], 0.0, 3, 0.01, 10.0, 0.1, 0, False, session))
    previews = [u[c.live] for u in updates[1:] if c.live in u]
    assert len(previews) == 3 and all(isinstance(p, Image.Image) for p in previews)
    assert 'value="3" max="3"' in updates[-2][c.progress]
    final = updates[-1]
    assert "Done" in final[c.progress] and final[c.result_photo].size == (512, 512)
    assert [caption for _, caption in final[c.gallery]["value"]] == [
        "Face 1: original", "Face 1: e4e inversion", "Face 1: fake neighbour",
        f"Face 1: anonymized, m = 0, cosine {final[c.metrics][0][2]:.3f}"]
    assert final[c.gallery]["columns"] == 4
    assert len(final[c.metrics]) == 1 and final[c.metrics][0][:2] == [1, 0.0]
    assert final[c.metrics][0][4] in ("same person", "different person")


def test_ui_compare_runs_margins_as_one_batch(served, astronaut, monkeypatch, tiny_pipeline):
    app, _ = served
    c = app.components
    batches = []
    original = tiny_pipeline.anonymize

    def spy(photo, **kwargs):
        batches.append(kwargs["margins"])
        yield from original(photo, **kwargs)

    monkeypatch.setattr(tiny_pipeline, "anonymize", spy)
    updates = list(app.compare(str(astronaut), [0], "0, 0.5, 1", 1, 0.01, 10.0, 0.1, 0, False, ui.Session()))
    assert batches == [(0.0, 0.5, 1.0)]
    gallery = updates[-1][c.gallery]
    assert gallery["columns"] == 4 and [caption for _, caption in gallery["value"]][:2] == [
        "Face 1: original", f"m = 0 (cosine {updates[-1][c.metrics][0][2]:.3f}, {updates[-1][c.metrics][0][4]})"]
    assert [row[1] for row in updates[-1][c.metrics]] == [0.0, 0.5, 1.0]


def test_ui_messages_for_bad_photos(served, bad_photos):
    app, _ = served
    assert "not an image" in app.on_photo(str(bad_photos["text"]), ui.Session())[2]
    assert "No face" in app.on_photo(str(bad_photos["no face"]), ui.Session())[2]
    assert "too large" in app.on_photo(str(bad_photos["huge"]), ui.Session())[2]
    with pytest.raises(ui.gr.Error, match="Tick at least one face"):
        list(app.run(str(bad_photos["no face"]), [], 0.0, 3, 0.01, 10.0, 0.1, 0, False, ui.Session()))


def test_api_error_messages_then_keeps_serving(client, astronaut, bad_photos):
    cases = [(bad_photos["text"], "0", "not an image"), (bad_photos["no face"], "0", "No face"),
             (bad_photos["huge"], "0", "too large"), (astronaut, "0, 2", "between 0 and 1")]
    with pytest.raises(AppError, match="Steps must lie between 1 and"):
        anonymize(client, astronaut, steps=TEST_CONFIG.max_steps + 1)
    for photo, margins, expected in cases:
        with pytest.raises(AppError, match=expected):
            anonymize(client, photo, margins=margins, steps=1)
    assert outside_faces_equal(Path(anonymize(client, astronaut, steps=1)[0]), astronaut)


@pytest.mark.parametrize("failure, message", [(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried 2 GiB"),
                                               serving.OOM_MESSAGE),
                                              (RuntimeError("secret internal detail"), serving.UNEXPECTED_MESSAGE)])
def test_api_gpu_failures_are_messages(client, astronaut, tiny_pipeline, monkeypatch, failure, message):
    original = tiny_pipeline.anonymize

    def fails_once(photo, **kwargs):
        monkeypatch.setattr(tiny_pipeline, "anonymize", original)
        yield next(original(photo, **kwargs))
        raise failure

    monkeypatch.setattr(tiny_pipeline, "anonymize", fails_once)
    with pytest.raises(AppError) as caught:
        anonymize(client, astronaut, steps=2)
    assert str(caught.value) == message and "secret" not in str(caught.value)
    assert outside_faces_equal(Path(anonymize(client, astronaut, steps=1)[0]), astronaut)


def test_weights_unavailable_is_a_message(tmp_path, astronaut):
    demo, app = ui.build_app(weights=str(tmp_path / "no-such-weights"), device="cpu", config=TEST_CONFIG)
    _, url, _ = ui.launch_app(demo, TEST_CONFIG, host="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        for _ in range(2):   # the second request is served too, and tries the load again
            with pytest.raises(AppError) as failed:
                anonymize(client, astronaut, steps=1)
            assert str(failed.value) == serving.LOAD_FAILED_MESSAGE   # no server path for visitors
        state, line = app.loader.status()
        assert state == "failed" and line == serving.LOAD_FAILED_MESSAGE and "no-such" not in app.status_text()
        assert serving.LOAD_FAILED_MESSAGE in app.on_photo(str(astronaut), ui.Session())[2]
    finally:
        demo.close()


def test_two_clients_at_once_get_their_own_results(served, astronaut, tiny_pipeline, monkeypatch, tmp_path):
    """Client A's run is held on the GPU slot; B waits in the queue and is told its place;
    then each gets the results of its own photo."""
    mirrored = tmp_path / "mirrored.png"
    Image.open(astronaut).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(mirrored)
    entered, release = threading.Event(), threading.Event()
    original = tiny_pipeline.anonymize

    def held(photo, **kwargs):
        if not entered.is_set():
            entered.set()
            assert release.wait(120)
        yield from original(photo, **kwargs)

    monkeypatch.setattr(tiny_pipeline, "anonymize", held)
    url = served[1]
    client_a, client_b = Client(url, verbose=False), Client(url, verbose=False)
    job_a = client_a.submit(handle_file(str(astronaut)), "all", "0", 1, *API_DEFAULTS.values(), api_name="/anonymize")
    assert entered.wait(120)
    job_b = client_b.submit(handle_file(str(mirrored)), "all", "0", 1, *API_DEFAULTS.values(), api_name="/anonymize")
    try:
        for _ in range(2400):   # up to 2 minutes on a busy machine
            status = job_b.status()
            assert status.code not in (Status.PROCESSING, Status.FINISHED), "B ran while A held the GPU slot"
            if status.code == Status.IN_QUEUE and status.rank is not None:
                break
            threading.Event().wait(0.05)
        assert status.code == Status.IN_QUEUE and status.rank == 0 and status.queue_size >= 1
    finally:
        release.set()
    photo_a, _, record_a, files_a = job_a.result(timeout=300)
    photo_b, _, record_b, files_b = job_b.result(timeout=300)
    assert outside_faces_equal(Path(photo_a), astronaut) and outside_faces_equal(Path(photo_b), mirrored)
    for photo, files, original in ((photo_a, files_a, astronaut), (photo_b, files_b, mirrored)):
        download = next(Path(f) for f in files if Path(f).name == "photo_m0.png")
        assert outside_faces_equal(download, original)
        assert np.array_equal(np.asarray(Image.open(download)), np.asarray(Image.open(photo)))
    assert record_a["faces"][0]["fake_index"] is not None and record_b["faces"][0]["fake_index"] is not None


START_APP_CHILD = """
import json, sys, urllib.request
from falco import serving
order = []
in_background = serving.in_background   # start_app fetches the weights with it
serving.in_background = lambda work, name: order.append("gradio" in sys.modules) or in_background(work, name)
demo, app = serving.start_app(weights=sys.argv[1], device="cpu", host="127.0.0.1",
                              prevent_thread_lock=True, quiet=True)
with urllib.request.urlopen(demo.local_url, timeout=30) as page:
    status = page.status
pipe = app.loader.get()
demo.close()
print(json.dumps({"gradio_before_loading": order, "status": status, "device": str(pipe.device),
                  "on_gpu": app.on_gpu}))
"""


@pytest.mark.slow
def test_start_app_loads_before_importing_gradio(tiny_weights):
    """What app.py runs, in a fresh process: the load starts before Gradio's import, the page serves, the
    networks load."""
    done = subprocess.run([sys.executable, "-c", START_APP_CHILD, str(tiny_weights)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"gradio_before_loading": [False], "status": 200, "device": "cpu", "on_gpu": False}


APP_HELP_CHILD = """
import runpy, sys
sys.argv = ["app.py", "--help"]
try:
    runpy.run_path("app.py", run_name="__main__")
except SystemExit as done:
    print("torch imported:", "torch" in sys.modules, "exit:", done.code)
"""


def test_app_help_answers_without_importing_torch():
    done = subprocess.run([sys.executable, "-c", APP_HELP_CHILD], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1], check=False)
    assert "--weights" in done.stdout and "--device" in done.stdout
    assert done.stdout.strip().endswith("torch imported: False exit: 0")


def test_app_refuses_an_unknown_device_in_one_line():
    done = subprocess.run([sys.executable, "app.py", "--device", "tpu9"], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1], check=False)
    assert done.returncode == 1 and "Unknown device 'tpu9'" in done.stderr and "Traceback" not in done.stderr
