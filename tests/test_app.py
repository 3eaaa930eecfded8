"""The app served on localhost with tiny random weights: the named API endpoint through
gradio_client, the page handlers, error paths, and two visitors at once."""

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from PIL import Image
from safetensors.torch import load_file

from falco.config import AppConfig, OptimConfig
from falco.ui import engine, messages, page, render, sessions

# A served app, subprocesses of `python app.py` and whole runs: out of the quick loop (README "Tests").
pytestmark = pytest.mark.slow

# Few steps, a preview at each: enough to see streaming, quick on a CPU.
TEST_CONFIG = AppConfig(cpu_optim=OptimConfig(steps=3, preview_every=1, loss_on_skip256=True))
API_DEFAULTS = dict(lr=0.01, lambda_id=10.0, lambda_attr=0.1, seed=0, another_fake=False)
CLICK = SimpleNamespace(session_hash="a-page-with-no-run-in-line")   # the gr.Request of a click


@pytest.fixture(scope="module")
def served(tiny_pipeline):
    demo, app = page.build_app(loader=engine.EngineLoader(lambda: tiny_pipeline), device="cpu", config=TEST_CONFIG)
    _, url, _ = page.launch_app(demo, TEST_CONFIG, host="127.0.0.1", prevent_thread_lock=True, quiet=True)
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


@pytest.fixture
def upload(served, astronaut, tmp_path) -> Path:
    """A copy of the astronaut standing for an upload (Gradio's /upload made it): a session that ends deletes it."""
    path = tmp_path / "upload" / "astronaut.png"
    path.parent.mkdir()
    path.write_bytes(astronaut.read_bytes())
    served[0].demo.upload_file_set.add(str(path))
    return path


def raw_call(url: str, data: list) -> tuple[str, object]:
    """Calls /anonymize over HTTP as any client may, with values gradio_client would not send:
    ("complete", outputs) or ("error", message)."""
    with httpx.Client(base_url=url, timeout=300) as http:
        # json.dumps writes inf as Infinity, which Python's JSON reader (the server's) takes back.
        body = json.dumps({"data": data})
        event_id = http.post("gradio_api/call/anonymize", content=body,
                             headers={"content-type": "application/json"}).json()["event_id"]
        kind = None
        for line in http.get(f"gradio_api/call/anonymize/{event_id}").text.splitlines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in ("complete", "error"):
                data = json.loads(line[6:])
                return kind, data["error"] if kind == "error" and isinstance(data, dict) else data
    raise AssertionError("no result")


def uploaded(url: str, photo: Path) -> str:
    """The server path of ``photo`` uploaded through Gradio's /upload, as a client does before a call."""
    with httpx.Client(base_url=url, timeout=60) as http, photo.open("rb") as f:
        return http.post("gradio_api/upload", files={"files": (photo.name, f)}).json()[0]


def anonymize(client: Client, photo: Path, margins: str = "0", steps: int = 2, faces: str = "all"):
    return client.predict(handle_file(str(photo)), faces, margins, steps, *API_DEFAULTS.values(),
                          api_name="/anonymize")


def payload(path) -> dict:
    """The photo as a run receives it: Gradio's file record, unprocessed."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def form_data(app, session, photo, picked=(0,), steps=3, seed=0, lr=0.01, picked_for=None, margins="0",
              margin=0.0) -> dict:
    """The form as Run and Compare m receive it: one dict keyed by component, values unprocessed."""
    c = app.components
    return {c.photo: payload(photo) if photo else None, c.picked_for: str(photo) if picked_for is None else picked_for,
            c.picked: list(picked), c.margin: margin, c.margins_text: margins, c.steps: steps, c.lr: lr,
            c.lambda_id: 10.0, c.lambda_attr: 0.1, c.seed: seed, c.another_fake: False, c.session: session}


def ui_run(app, session, photo, **form):
    return app.run(form_data(app, session, photo, **form))


def shown_files(update: dict, c) -> list[Path]:
    """Every file an update shows the visitor."""
    files = [update.get(c.faces_view), update.get(c.live), update.get(c.result_photo), *(update.get(c.downloads) or [])]
    before_after = update.get(c.before_after)
    files += [image["path"] for image in (before_after.value or ()) if image] if before_after else []
    gallery = update.get(c.gallery)
    files += [image for image, _ in (gallery["value"] if gallery else [])]
    return [Path(f) for f in files if f]


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
    assert "margin" not in record["params"]["optim"]   # m has one carrier: the run's margins, one per result
    assert record["params"]["weights"] == f"local folder {Path(tiny_pipeline.source).name}"   # no server path
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


def test_api_calls_leave_nothing_in_the_machines_temporary_folder(client, astronaut, session_tmp, system_tmp,
                                                                  monkeypatch):
    # gradio_client makes a folder per downloaded file in tempfile.gettempdir() and leaves it there, whatever
    # GRADIO_TEMP_DIR says: the run's temporary folder takes them (conftest), and goes when the run ends.  The
    # machine's own temporary folder is not looked at: other programs of the machine write there too.
    assert Path(tempfile.gettempdir()) == Path(os.environ["TMPDIR"]) == session_tmp != system_tmp
    asked, gettempdir = [], tempfile.gettempdir
    monkeypatch.setattr(tempfile, "gettempdir", lambda: asked.append(Path(gettempdir())) or asked[-1])
    photo, _, _, files = anonymize(client, astronaut, steps=1)
    assert all(Path(f).is_relative_to(session_tmp) for f in [photo, *files])
    assert asked and set(asked) == {session_tmp}   # every temporary folder the call made is in the run's own


def test_ui_run_streams_previews_then_results(served, upload):
    app, _ = served
    c = app.components
    session = sessions.Session()
    shown = app.on_photo(str(upload), session)
    assert "1 usable" in shown[c.faces_text] and shown[c.picked].value == [0]
    assert Image.open(shown[c.faces_view]).size == (512, 512) and shown[c.picked_for] == str(upload)
    assert session.detections_for(str(upload)) is not None
    updates = list(ui_run(app, session, upload))
    previews = [u[c.live] for u in updates if c.live in u]
    assert len(previews) == 3 and all(Image.open(p).size == (256, 256) for p in previews)
    # Until its first step a run says it started and clears nothing: one stopped then leaves the old results shown.
    assert "Started" in updates[0][c.progress] and set(updates[0]) == {c.progress}
    assert "Step <b>1</b>" in updates[1][c.progress]
    assert updates[1][c.result_photo] is None and updates[1][c.gallery] == [] and updates[1][c.before_after] is None
    assert 'value="3" max="3"' in updates[-2][c.progress]
    final = updates[-1]
    assert "Done" in final[c.progress] and Image.open(final[c.result_photo]).size == (512, 512)
    assert [caption for _, caption in final[c.gallery]["value"]] == [
        "Face 1: original", "Face 1: e4e inversion", "Face 1: fake neighbour",
        "Face 1: anonymized, m = 0"]
    assert final[c.gallery]["columns"] == 4 and not final[c.plot].visible   # one m: no plot against m
    assert len(final[c.metrics]) == 1 and final[c.metrics][0][:2] == [1, 0.0]
    assert final[c.metrics][0][4] in ("same person", "different person")
    # Before | after: the photo as uploaded beside the result, then each face's crop, picked below the slider.
    before, after = (Path(image["path"]) for image in final[c.before_after].value)
    assert after.name == "photo_m0.png" and np.array_equal(np.asarray(Image.open(before).convert("RGB")),
                                                           np.asarray(Image.open(upload).convert("RGB")))
    assert final[c.shown_view].choices == [("Photo", "Photo"), ("Face 1", "Face 1")] and final[c.shown_view].visible
    face = app.show_before_after("Face 1", 0.0, session)[c.before_after]
    assert [Path(image["path"]).name for image in face.value] == ["face1_aligned.png", "face1_m0_anonymized.png"]
    assert face.label == "Face 1: original | anonymized, m = 0"

    # Every file shown (faces found, previews, results, downloads) is the session's own, and goes with it.
    files = [f for update in [shown, *updates] for f in shown_files(update, c)]
    # faces, previews, result, gallery, downloads, before | after
    assert len(files) == 1 + 3 + 1 + 4 + 8 + 2 and all(f.exists() for f in files)
    assert all(f.is_relative_to(session.folder) and f.is_relative_to(app.cache) for f in files)
    # The original is written once per photo: a second run shows the same file, not a fresh copy.
    again = list(ui_run(app, session, upload, steps=1))[-1]
    assert again[c.before_after].value[0]["path"] == str(before) and before.exists()
    sessions.end_session(session)
    assert not any(f.exists() for f in files) and not upload.exists()


def test_a_photo_two_sessions_share_stays_until_both_end(served, upload):
    """Gradio gives two sessions that upload the same file the same path: one ending keeps it for the other."""
    app, _ = served
    c = app.components
    first, second = sessions.Session(), sessions.Session()
    for session in (first, second):
        app.on_photo(str(upload), session)
    sessions.end_session(first)
    assert upload.exists()
    assert "Done" in list(ui_run(app, second, upload, steps=1))[-1][c.progress]
    sessions.end_session(second)
    assert not upload.exists()
    # A photo gone anyway (its session ended in another tab) is a message without the server's path.
    assert run_error(app, sessions.Session(), upload, steps=1) == (messages.PHOTO_GONE,
                                                                       render.progress_box(render.warning(messages.PHOTO_GONE)))
    assert app.on_photo(str(upload), sessions.Session())[c.faces_text] == render.warning(messages.PHOTO_GONE)


def run_error(app, *args, **kwargs) -> tuple[str, str]:
    """(message, progress box) of a run that fails before it starts; its last update also clears the results."""
    updates = ui_run(app, *args, **kwargs)
    shown = None
    with pytest.raises(gr.Error) as caught:
        for shown in updates:
            pass
    c = app.components
    assert shown[c.result_photo] is None and shown[c.gallery] == [] and shown[c.downloads] is None
    return caught.value.message, shown[c.progress]


def test_runs_check_the_photo_and_the_faces_ticked(served, astronaut, bad_photos, upload):
    app, _ = served
    session = sessions.Session()
    app.on_photo(str(astronaut), session)
    app.demo.upload_file_set.add(str(bad_photos["no face"]))   # as Gradio's /upload records a new photo
    first = "Upload a photo first."
    assert run_error(app, session, None) == (first, render.progress_box(render.warning(first)))
    # Run clicked before the new photo's faces were numbered: the picks are those of the previous photo.
    message, box = run_error(app, session, bad_photos["no face"], picked=[0], picked_for=str(astronaut))
    assert "still being found" in message and "still being found" in box
    # The astronaut's face 2 is not usable; there is no face 4.
    for picked, reason in (([1], "Face 2 cannot be anonymized"), ([3], "there is no face 4"),
                           (["0"], "chosen by number")):
        assert reason in run_error(app, session, astronaut, picked=picked)[0]
    # Faces the session has not seen (an upload) are found again before the check.
    assert "Face 2 cannot be anonymized" in run_error(app, sessions.Session(), upload, picked=[1])[0]
    # Runs skip Gradio's preprocessing: a file neither uploaded, an example nor the session's photo is refused
    # (any caller of the event could otherwise name any image on the server).
    assert run_error(app, sessions.Session(), astronaut)[0] == messages.PHOTO_NOT_UPLOADED
    message, box = run_error(app, session, astronaut, seed=-5)
    assert "seed must lie between 0 and 2**63 - 1, not -5" in message and "seed" in box
    assert "learning rate must be above 0, not -1" in run_error(app, session, astronaut, lr=-1)[0]
    assert "The seed must be a number" in run_error(app, session, astronaut, seed=None)[0]


def test_stop_makes_the_run_say_stopped_as_its_last_update(served, astronaut):
    """Stop only asks; the run's own last update says "Stopped after step k" (k kept in the session), so no
    update already on its way can land after it.  A Stop while the run waits ends it before it starts; a Stop
    clicked before the run was asked for does not."""
    app, _ = served
    c = app.components
    session = sessions.Session()
    app.on_photo(str(astronaut), session)
    app.request_run(session, CLICK)
    updates = ui_run(app, session, astronaut, steps=3)
    assert "Started" in next(updates)[c.progress]
    next(updates)
    assert session.last_step == 1
    assert (app.clock.step, app.clock.total) == (1, 3)   # the pace the expected waits of the line use
    app.stop(session)
    assert list(updates) == [{c.progress: render.progress_box("Stopped after step 1.")}]
    assert app.clock.started is None   # no run holds the line

    app.request_run(session, CLICK)
    app.stop(session)   # while the run waits in the queue
    stopped = render.progress_box(messages.STOPPED_WAITING)
    assert list(ui_run(app, session, astronaut, steps=3)) == [{c.progress: stopped}]

    app.stop(session)   # nothing running: the next run is not stopped by it
    app.request_run(session, CLICK)
    assert "Done: 1 steps" in list(ui_run(app, session, astronaut, steps=1))[-1][c.progress]
    session.uploads.clear()   # a fixture, not an upload
    session.forget()


def test_a_new_photo_clears_the_results(served, astronaut, bad_photos):
    app, _ = served
    c = app.components
    session = sessions.Session()
    app.on_photo(str(astronaut), session)
    shown = app.on_photo(str(bad_photos["no face"]), session)
    assert shown[c.result_photo] is None and shown[c.gallery] == [] and shown[c.metrics] == []
    assert shown[c.downloads] is None and shown[c.live] is None and shown[c.progress] == ""
    assert shown[c.picked].value == [] and shown[c.picked_for] == str(bad_photos["no face"])
    session.uploads.clear()   # fixtures, not uploads
    session.forget()



def test_ui_compare_runs_margins_as_one_batch(served, upload, monkeypatch, tiny_pipeline):
    app, _ = served
    c = app.components
    batches = []
    original = tiny_pipeline.anonymize

    def spy(photo, **kwargs):
        batches.append(kwargs["margins"])
        yield from original(photo, **kwargs)

    monkeypatch.setattr(tiny_pipeline, "anonymize", spy)
    session = sessions.Session()
    app.on_photo(str(upload), session)
    updates = list(app.compare(form_data(app, session, upload, steps=1, margins="0, 0.5, 1")))
    assert batches == [(0.0, 0.5, 1.0)]
    gallery = updates[-1][c.gallery]
    assert gallery["columns"] == 4 and [caption for _, caption in gallery["value"]][:2] == [
        "Face 1: original", f"m = 0, cosine {updates[-1][c.metrics][0][2]:.3f}"]
    assert [row[1] for row in updates[-1][c.metrics]] == [0.0, 0.5, 1.0]
    live = [u[c.live] for u in updates if c.live in u]
    assert Image.open(live[-1]).size == (3 * 256, 256)   # one face: one row of its three m

    assert updates[-1][c.plot].visible and updates[-1][c.plot].value   # identity against m, per face
    # The m slider browses the computed results at once: photo, face and figures at the nearest computed m.
    downloads = {Path(f).name: f for f in updates[-1][c.downloads]}
    for wanted, shown, note in ((0.5, 0.5, False), (0.6, 0.5, True), (0.9, 1.0, True), (0.0, 0.0, False)):
        view = app.show_margin(wanted, "Face 1", session)
        assert view[c.result_photo].value["path"] == downloads[f"photo_m{shown:g}.png"]
        assert view[c.result_photo].label.startswith(f"Anonymized photo, m = {shown:g}")
        assert ("nearest to" in view[c.result_photo].label) == note
        assert [row[1] for row in view[c.metrics]] == [shown]
        row = next(r for r in updates[-1][c.metrics] if r[1] == shown)   # the figures of that m, as computed
        assert view[c.metrics][0] == row
        assert Path(view[c.gallery].value[1]["image"]["path"]).name == f"face1_m{shown:g}_anonymized.png"
        # The before | after slider follows, on the face picked for it.
        assert Path(view[c.before_after].value[1]["path"]).name == f"face1_m{shown:g}_anonymized.png"
        assert view[c.before_after].label.startswith(f"Face 1: original | anonymized, m = {shown:g}")
        assert ("nearest to" in view[c.before_after].label) == note
    assert app.show_margin(0.5, "Photo", sessions.Session()) == {}   # nothing compared: the slider only sets m
    session.forget()


def test_ui_messages_for_bad_photos(served, bad_photos):
    app, _ = served
    text = app.components.faces_text
    assert "not an image" in app.on_photo(str(bad_photos["text"]), sessions.Session())[text]
    # The page's words are the API's, the hint included.
    assert app.on_photo(str(bad_photos["no face"]), sessions.Session())[text] == (
        render.warning("No face was found in the photo. Faces should be roughly frontal and at least about 40 pixels "
                       "wide."))
    assert "too large" in app.on_photo(str(bad_photos["huge"]), sessions.Session())[text]
    seen = sessions.Session()
    app.on_photo(str(bad_photos["no face"]), seen)   # the session's photo, as the page's change event gives it
    with pytest.raises(gr.Error, match="Choose at least one face"):
        list(ui_run(app, seen, bad_photos["no face"], picked=[]))


def test_api_error_messages_then_keeps_serving(client, astronaut, bad_photos):
    cases = [(bad_photos["text"], "0", "not an image"), (bad_photos["no face"], "0", "No face"),
             (bad_photos["huge"], "0", "too large"), (astronaut, "0, 2", "between 0 and 1")]
    too_many = TEST_CONFIG.max_steps + 1
    with pytest.raises(AppError, match=f"Steps must be at most {TEST_CONFIG.max_steps}, not {too_many}"):
        anonymize(client, astronaut, steps=too_many)
    with pytest.raises(AppError, match=r"seed must lie between 0 and 2\*\*63 - 1, not 1180591620717411303424"):
        client.predict(handle_file(str(astronaut)), "all", "0", 1, *{**API_DEFAULTS, "seed": 2**70}.values(),
                       api_name="/anonymize")
    for photo, margins, expected in cases:
        with pytest.raises(AppError, match=expected):
            anonymize(client, photo, margins=margins, steps=1)
    assert outside_faces_equal(Path(anonymize(client, astronaut, steps=1)[0]), astronaut)


def test_api_upload_is_deleted_after_the_call(served, client, upload):
    app, _ = served
    named = upload.with_name("api-upload-only.png")
    upload.rename(named)
    photo, _, _, files = anonymize(client, named, steps=1)
    assert outside_faces_equal(Path(photo), named)
    assert not list(app.cache.rglob(named.name))   # the server's copy of the upload
    assert all(Path(f).exists() for f in files)   # what the call returned stays for the client (and the sweep)


def test_api_touches_no_file_it_did_not_upload(served, client, upload):
    """Anyone may send any path of Gradio's cache (the example's is in /config): the call may read it, but
    only an upload of its own goes with it.  The example and a session's files stay."""
    app, url = served
    c = app.components
    example = next(iter(c.photo.keep_in_cache))
    session = sessions.Session()
    shown = Path(app.on_photo(str(upload), session)[c.faces_view])   # in the session's folder
    for path in (example, str(shown)):
        raw_call(url, [{"path": path, "meta": {"_type": "gradio.FileData"}}, "all", "0", 1, *API_DEFAULTS.values()])
        assert Path(path).exists()
    assert "1 usable" in app.on_photo(example, sessions.Session())[c.faces_text]   # the example still works
    sessions.end_session(session)


def test_api_refuses_a_photo_not_uploaded_without_naming_a_path(served, astronaut):
    app, url = served
    def file(path: str) -> dict:
        return {"path": path, "meta": {"_type": "gradio.FileData"}}

    # Relative, elsewhere on the server, out of the cache through "..", no path; not a file record at all.
    for photo in (file("x.jpg"), file(str(astronaut)), file(str(app.cache / ".." / "x.jpg")), {"url": "x"},
                  "abc", str(astronaut), 5, ["x"], {"path": 3}):
        assert raw_call(url, [photo, "all", "0", 1, *API_DEFAULTS.values()]) == (
            "error", "The photo must be uploaded with the call.")   # names no server path


@pytest.mark.parametrize("change", [{"margins": "abc"}, {"steps": "abc"}, {"seed": None}, {"faces": "x"},
                                    {"another_fake": "yes"}])
def test_refused_api_calls_delete_the_upload(served, astronaut, tmp_path, change):
    app, url = served
    photo = tmp_path / f"refused-{len(str(change))}-{next(iter(change))}.png"
    photo.write_bytes(astronaut.read_bytes())
    path = uploaded(url, photo)
    values = {"faces": "all", "margins": "0", "steps": 1, **API_DEFAULTS, **change}
    kind, message = raw_call(url, [{"path": path, "meta": {"_type": "gradio.FileData"}}, *values.values()])
    assert kind == "error" and not Path(path).exists()


@pytest.mark.parametrize("name, value, expected", [
    ("steps", "abc", "Steps must be a number."), ("steps", True, "Steps must be a number."),
    ("steps", [3], "Steps must be a number."), ("steps", float("inf"), "Steps must be a number."),
    ("steps", 1.4, "Steps must be a whole number, not 1.4."), ("steps", 0.5, "Steps must be a whole number, not 0.5."),
    ("seed", "abc", "The seed must be a number."), ("seed", None, "The seed must be a number."),
    ("seed", True, "The seed must be a number."), ("seed", 1.5, "The seed must be a whole number, not 1.5."),
    ("seed", float("inf"), "The seed must be a number."), ("lr", "abc", "The learning rate must be a number."),
    ("lr", None, "The learning rate must be a number."), ("lr", 1e400, "The learning rate must be a number.")])
def test_api_bad_numbers_are_one_line(served, client, astronaut, caplog, capfd, name, value, expected):
    values = {"faces": "all", "margins": "0", "steps": 1, **API_DEFAULTS, name: value}
    with caplog.at_level("ERROR"):
        if value == float("inf"):   # gradio_client does not send it (JSON has no inf); any other client may
            path = uploaded(served[1], astronaut)
            assert raw_call(served[1], [{"path": path, "meta": {"_type": "gradio.FileData"}}, *values.values()]) == (
                "error", expected)
        else:
            with pytest.raises(AppError) as caught:
                client.predict(handle_file(str(astronaut)), *values.values(), api_name="/anonymize")
            assert str(caught.value) == expected
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert "Traceback" not in capfd.readouterr().err


def test_page_refuses_what_it_would_round_or_clamp(served, astronaut):
    app, _ = served
    session = sessions.Session()
    app.on_photo(str(astronaut), session)
    assert run_error(app, session, astronaut, steps=100000)[0] == "Steps must be at most 200, not 100000."
    assert run_error(app, session, astronaut, steps=1.4)[0] == "Steps must be a whole number, not 1.4."
    assert run_error(app, session, astronaut, seed=1.5)[0] == "The seed must be a whole number, not 1.5."
    assert run_error(app, session, astronaut, margin=1.5)[0] == "Every m must lie between 0 and 1, not 1.5."
    session.forget()


def test_api_calls_queued_with_the_same_photo_all_run(served, astronaut, tmp_path):
    """Gradio stores the same photo at one path: the upload lives until the last call with it is done."""
    app, url = served
    photo = tmp_path / "shared-by-three.png"
    photo.write_bytes(astronaut.read_bytes())
    clients = [Client(url, verbose=False) for _ in range(3)]   # the first, one between, the last
    jobs = [cl.submit(handle_file(str(photo)), "all", "0", 1, *API_DEFAULTS.values(), api_name="/anonymize")
            for cl in clients]
    for job in jobs:
        assert outside_faces_equal(Path(job.result(timeout=300)[0]), astronaut)
    for _ in range(100):   # the last call lets go of the file just after its result is sent
        if not list(app.cache.rglob(photo.name)):
            break
        threading.Event().wait(0.1)
    assert not list(app.cache.rglob(photo.name))


def test_api_gpu_failures_are_messages(client, astronaut, tiny_pipeline, monkeypatch):
    """Each failure of a run is its message, and the server goes on serving: the call after each one runs (the
    next failure's, which gets as far as its first step, then one that completes)."""
    original = tiny_pipeline.anonymize

    def fails_once(failure, runs: list):
        def anonymize(photo, **kwargs):
            monkeypatch.setattr(tiny_pipeline, "anonymize", original)
            runs.append(photo)
            yield next(original(photo, **kwargs))
            raise failure
        return anonymize

    for failure, message in ((torch.cuda.OutOfMemoryError("CUDA out of memory. Tried 2 GiB"), messages.OOM_MESSAGE),
                             (RuntimeError("secret internal detail"), messages.UNEXPECTED_MESSAGE)):
        runs = []
        monkeypatch.setattr(tiny_pipeline, "anonymize", fails_once(failure, runs))
        with pytest.raises(AppError) as caught:
            anonymize(client, astronaut, steps=2)
        assert len(runs) == 1 and str(caught.value) == message and "secret" not in str(caught.value)
    assert outside_faces_equal(Path(anonymize(client, astronaut, steps=1)[0]), astronaut)


def test_weights_unavailable_is_a_message(tmp_path, astronaut):
    demo, app = page.build_app(weights=str(tmp_path / "no-such-weights"), device="cpu", config=TEST_CONFIG)
    _, url, _ = page.launch_app(demo, TEST_CONFIG, host="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        for _ in range(2):   # the second request is served too, and tries the load again
            with pytest.raises(AppError) as failed:
                anonymize(client, astronaut, steps=1)
            assert str(failed.value) == messages.LOAD_FAILED_MESSAGE   # no server path for visitors
        state, line = app.loader.status()
        assert state == "failed" and line == messages.LOAD_FAILED_MESSAGE and "no-such" not in app.status_text()
        shown = app.on_photo(str(astronaut), sessions.Session())[app.components.faces_text]
        assert messages.LOAD_FAILED_MESSAGE in shown
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
from falco.ui import startup
order = []
in_background = startup.in_background   # start_app fetches the weights with it
startup.in_background = lambda work, name: order.append("gradio" in sys.modules) or in_background(work, name)
demo, app = startup.start_app(weights=sys.argv[1], device="cpu", host="127.0.0.1",
                              prevent_thread_lock=True, quiet=True)
with urllib.request.urlopen(demo.local_url, timeout=30) as page:
    status = page.status
pipe = app.loader.get()
demo.close()
print(json.dumps({"gradio_before_loading": order, "status": status, "device": str(pipe.device),
                  "on_gpu": app.on_gpu}))
"""


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
