"""The app's pieces without a server: settings parsing, error messages, loading, pictures."""

import json
import logging
import re
import sys
import threading
import time
import types
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from falco import device, photo_folders
from falco.checks import check_face_picks
from falco.config import DLIB_SAME_PERSON_DISTANCE, AppConfig, CliConfig, OptimConfig, ZeroGpuConfig
from falco.errors import FalcoError, NoFaceError, WeightsError
from falco.results import (
    WPLUS_FILE_METADATA,
    AnonymizationResult,
    FaceResult,
    StepEvent,
)
from falco.ui import downloads, engine, form, gpu_slots, messages, page, render, sessions


def test_parse_faces():
    assert form.parse_faces("all") is None
    assert form.parse_faces("  ") is None
    assert form.parse_faces("3, 1,3") == (0, 2)
    for bad in ("one", "0", "1,-2"):
        with pytest.raises(FalcoError):
            form.parse_faces(bad)


def test_parse_margins():
    assert form.parse_margins("0, 0.25;1", limit=8) == (0.0, 0.25, 1.0)
    assert form.parse_margins("0.5, 0.5", limit=8) == (0.5,)
    for bad, limit in (("", 8), ("0.5, x", 8), ("1.5", 8), ("0,0.1,0.2", 2)):
        with pytest.raises(FalcoError):
            form.parse_margins(bad, limit=limit)


def test_optim_settings_override_and_validation():
    base = OptimConfig(preview_every=3, loss_on_skip256=True)
    optim = form.parse_optim(base, steps=7.0, lr=0.02, lambda_id=5, lambda_attr=0.5, seed=4.0, max_steps=10)
    assert (optim.steps, optim.lr, optim.lambda_id, optim.lambda_attr, optim.seed) == (7, 0.02, 5.0, 0.5, 4)
    assert optim.preview_every == 3 and optim.loss_on_skip256   # what the form does not show is kept
    for steps, lr in ((0, 0.01), (11, 0.01), (5, 0.0), (5, -1.0), (5, None), (5, float("nan"))):
        with pytest.raises(FalcoError):
            form.parse_optim(base, steps, lr, 1, 1, 0, max_steps=10)
    assert form.parse_optim(base, 5, 0.1, 1, 1, 2**63 - 1, max_steps=10).seed == 2**63 - 1
    for seed in (-5, 2**63, 2**70, 1e30, 1.5, float("inf"), None, "3"):
        with pytest.raises(FalcoError, match="[Ss]eed"):
            form.parse_optim(base, 5, 0.1, 1, 1, seed, max_steps=10)


def test_picks_must_be_usable_faces_of_the_photo():
    faces = [_face([[0, 0]] * 4), _face([[0, 0]] * 4, usable=False, reason="too small"), _face([[0, 0]] * 4)]
    assert check_face_picks([2, 0, 2], faces) == (0, 2)
    with pytest.raises(FalcoError, match="Choose at least one face"):
        check_face_picks([], faces)
    for picked, reason in (([1], "Face 2 cannot be anonymized: too small"), ([3], "there is no face 4"),
                           ([-1], "there is no face 0"), (["0"], "chosen by number"), ([0.0], "chosen by number"),
                           ([True], "chosen by number")):
        with pytest.raises(FalcoError, match=reason):
            check_face_picks(picked, faces)
    assert check_face_picks(None, faces) == (0, 2)   # every usable face


def test_page_wiring():
    """Runs take the form's values unprocessed, as one dict (Gradio's checks of the picker and the numbers would
    answer with its own messages before the handler); a click first notes the Stop count, so a Stop while the run
    waits ends it; Stop cancels nothing (the run says "Stopped" itself); a new photo ends a
    run."""
    demo, app = page.build_app(loader=engine.EngineLoader(object), device="cpu", load_now=False)
    fns = {fn.name: fn for fn in demo.fns.values()}
    runs = sorted([fns["run"]._id, fns["compare"]._id])
    c = app.components
    for name in ("run", "compare"):
        assert not fns[name].preprocess and set(fns[name].inputs) == {*c.form} and fns[name].inputs_as_dict
    # Every click reaches request_run at once (a line of its own, never full, so its refusal shows as a toast);
    # the run follows only a click it accepted.
    request = fns["request_run"]
    assert request.concurrency_id != fns["run"].concurrency_id and request.concurrency_limit is None
    assert request.trigger_mode == "multiple"
    for name in ("run", "compare"):
        assert fns[name].trigger_only_on_success and demo.fns[fns[name].trigger_after].name == "request_run"
    assert fns["stop"].queue is False and not fns["stop"].cancels
    cancelled_by = {target: sorted(fn.cancels) for fn in demo.fns.values() if fn.cancels for target in fn.targets}
    assert cancelled_by == {(c.photo._id, "change"): runs}   # a new photo, and nothing else
    assert c.session in fns["run"].outputs   # a session that ran registers its cleanup


def test_describe_error(caplog):
    assert messages.describe_error(NoFaceError("No face was found.")) == "No face was found."
    assert messages.describe_error(torch.cuda.OutOfMemoryError("CUDA out of memory")) == messages.OOM_MESSAGE
    with caplog.at_level(logging.ERROR, logger="falco.ui.messages"):
        message = messages.describe_error(KeyError("internal detail"))
    assert message == messages.UNEXPECTED_MESSAGE and "internal detail" not in message
    assert "internal detail" in caplog.text   # the details go to the log, not the page


def test_loader_reports_failure_then_recovers():
    attempts = []

    def factory():
        attempts.append(1)
        if len(attempts) == 1:
            raise WeightsError("Weights repo not found; set FALCO_WEIGHTS_REPO.")
        return "engine"

    loader = engine.EngineLoader(factory)
    assert loader.status()[0] == "loading"
    loader.start()
    for _ in range(1000):   # at most 10 s
        if loader.status()[0] != "loading":
            break
        time.sleep(0.01)
    state, line = loader.status()
    assert state == "failed" and line == messages.LOAD_FAILED_MESSAGE   # the reason is in the log, not the page
    assert loader.get() == "engine"          # the next request tries again
    assert loader.status()[0] == "ready" and loader.get() == "engine" and len(attempts) == 2


def test_loader_loads_once_across_threads():
    calls = []
    loader = engine.EngineLoader(lambda: calls.append(1) or object())
    results = []
    threads = [threading.Thread(target=lambda: results.append(loader.get())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(r is results[0] for r in results)


def _face(quad, usable=True, reason=None):
    return SimpleNamespace(quad=np.array(quad, dtype=float), usable=usable, reason=reason)


def test_annotate_and_summarise_faces():
    photo = Image.new("RGB", (200, 100), (0, 0, 255))
    faces = [_face([[10, 10], [10, 90], [90, 90], [90, 10]]),
             _face([[120, 20], [120, 40], [140, 40], [140, 20]], usable=False, reason="the face is too small")]
    annotated = np.asarray(render.annotate_faces(photo, faces)).astype(int)
    assert (np.asarray(photo) == (0, 0, 255)).all()                            # the input is left alone
    assert (annotated[50, 9:12] == [46, 204, 64]).all(axis=-1).any()          # usable: green outline
    assert (annotated[30, 119:122] == [170, 170, 170]).all(axis=-1).any()     # not usable: grey
    # A face at the photo's top edge has its number at the crop's foot, clear of the page's label over the top.
    top_face = np.asarray(render.annotate_faces(Image.new("RGB", (200, 200), (0, 0, 255)),
                                                [_face([[20, 0], [20, 120], [140, 120], [140, 0]])])).astype(int)
    tag = (top_face == [46, 204, 64]).all(axis=-1)
    tag[:, 18:23] = tag[:, 138:143] = tag[:3] = tag[118:123] = False   # the outline itself
    rows = np.nonzero(tag.any(axis=1))[0]
    assert rows.size and rows.min() > 60 and rows.max() < 120   # filled tag inside the crop's lower half
    choices, ticked, text = render.face_summary(faces)
    assert choices == [("Face 1", 0)] and ticked == [0]
    assert "Found 2 faces, 1 usable" in text and "Face 2 cannot be anonymized: the face is too small" in text


def test_preview_grid_tiles_previews_in_rows():
    strip = render.preview_grid([Image.new("RGB", (64, 64), c) for c in ("red", "blue")], tile=32, columns=2)
    assert strip.size == (64, 32)
    assert strip.getpixel((5, 5)) == (255, 0, 0) and strip.getpixel((40, 5)) == (0, 0, 255)
    colours = [(i, 0, 0) for i in range(15)]   # 3 faces x 5 m: a row per face
    grid = render.preview_grid([Image.new("RGB", (8, 8), c) for c in colours], tile=16, columns=5)
    assert grid.size == (80, 48) and grid.getpixel((8, 8)) == (0, 0, 0) and grid.getpixel((72, 40)) == (14, 0, 0)
    assert grid.getpixel((8, 24)) == (5, 0, 0)


def test_preview_tiles_carry_their_labels_on_a_band_at_their_foot():
    plain = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    labelled = render.preview_grid(plain, tile=64, columns=2, labels=["face 1, m = 0", "face 1, m = 1"])
    assert labelled.getpixel((5, 5)) == (255, 0, 0) and labelled.getpixel((69, 5)) == (0, 0, 255)   # tops untouched
    for x in (0, 64):   # each tile's foot: the dark band with light text on it
        band = labelled.crop((x, 54, x + 64, 64))
        assert band.getpixel((63, 0)) == (20, 20, 20) and (np.asarray(band) > 200).all(axis=-1).any()   # white text


def _result(margins, faces=(0,)):
    """A result of faces (detection indices) x margins whose every number says where it came from."""
    image = Image.new("RGB", (16, 16))
    items = [FaceResult(face_index=f, margin=m, aligned=image, inversion=image, fake=image,
                        anonymized=Image.new("RGB", (16, 16), (int(255 * m), f, 0)),
                        wplus=torch.full((10, 64), f + m), wplus_inversion=torch.full((10, 64), -f - 1.0),
                        fake_index=3 + f, fake_seed=7 + f, identity_cosine=0.2 + m / 2,
                        recognizer_distance=0.9 - m / 2) for f in faces for m in margins]
    return AnonymizationResult(items, [Image.new("RGB", (32, 32), (0, int(255 * m), 0)) for m in margins],
                               tuple(margins), {"steps": 3})


def test_galleries_and_metrics_label_every_image():
    result = _result([0.0, 1.0], faces=(0, 2))
    captions = [c for _, c in render.face_gallery(result)]
    assert captions[:3] == ["Face 1: original", "Face 1: e4e inversion", "Face 1: fake neighbour"]
    assert captions[3] == "Face 1: anonymized, m = 0" and captions[4] == "Face 1: anonymized, m = 1"
    assert captions[5] == "Face 3: original" and len(captions) == 10
    compare = [c for _, c in render.face_gallery(result, compare=True)]
    assert compare[0] == "Face 1: original" and compare[1].startswith("m = 0, ") and compare[2].startswith("m = 1, ")
    assert compare[3] == "Face 3: original" and len(compare) == 6
    assert compare[2] == f"m = 1, cosine {0.7:.3f}"   # the verdict is the table's (a tile's caption stays short)
    rows = render.metric_rows(result)
    assert [r[0] for r in rows] == [1, 1, 3, 3]
    assert [r[4] for r in rows] == ["different person", "same person"] * 2   # dlib distance 0.9 vs 0.4


def test_progress_names_each_item():
    event = StepEvent(3, 10, [(0, 0.0), (1, 0.5)], [], {}, [0.25, 0.75])
    html = render.progress_html(event)
    assert 'value="3" max="10"' in html and "Step <b>3</b> / 10" in html
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td></tr>", html)
    assert rows == [("1", "0", "0.250"), ("2", "0.5", "0.750")]   # a row per face and m, faces counted from 1


def test_downloads_hold_images_codes_and_record(tmp_path):
    result = _result([0.0, 0.5])
    record = downloads.run_record(result)
    paths = downloads.write_downloads(result, record, tmp_path)
    names = sorted(p.rsplit("/", 1)[1] for p in paths)
    assert names == sorted(["photo_m0.png", "photo_m0.5.png", "face1_aligned.png", "face1_inversion.png",
                            "face1_fake.png", "face1_m0_anonymized.png", "face1_m0.5_anonymized.png",
                            "wplus.safetensors", "run.json", downloads.ZIP_NAME])
    with zipfile.ZipFile(tmp_path / downloads.ZIP_NAME) as bundle:   # everything in one download, byte for byte
        assert sorted(bundle.namelist()) == sorted(n for n in names if n != downloads.ZIP_NAME)
        assert all(bundle.read(n) == (tmp_path / n).read_bytes() for n in bundle.namelist())
    assert Image.open(tmp_path / "photo_m0.5.png").getpixel((0, 0)) == (0, 127, 0)
    assert Image.open(tmp_path / "face1_m0.5_anonymized.png").getpixel((0, 0)) == (127, 0, 0)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved == record and set(saved) == {"params", "faces"}
    assert [f["same_person_for_dlib"] for f in saved["faces"]] == [False, False]   # dlib distances 0.9, 0.65


def _latents(path):
    with safe_open(str(path), "pt") as codes:
        return {name: codes.get_tensor(name) for name in codes.keys()}, codes.metadata()


def test_app_and_cli_write_the_same_record_and_codes(tmp_path):
    """One run, both writers: the app's download and the CLI's output hold the same faces and W+ file."""
    margins, faces = (0.0, 0.5, 1.0), (0, 2)
    result = _result(margins, faces)
    downloads.write_downloads(result, downloads.run_record(result), tmp_path / "app")
    pipeline = SimpleNamespace(anonymize=lambda source, **kwargs: iter([result]))
    photo_folders.anonymize_one(pipeline, tmp_path / "x.png", "x.png", tmp_path / "cli", margins, OptimConfig(), 1,
                                CliConfig())

    app_record = json.loads((tmp_path / "app" / "run.json").read_text())
    cli_record = json.loads((tmp_path / "cli" / "x.png.json").read_text())
    assert app_record["faces"] == cli_record["faces"] == result.face_records()
    assert app_record["params"] == cli_record["params"] == result.params
    assert [(f["face"], f["margin"], f["fake_index"], f["fake_seed"]) for f in app_record["faces"]] == [
        (f + 1, m, 3 + f, 7 + f) for f in faces for m in margins]   # face numbers count from 1, as the page's
    assert (tmp_path / "app" / "face3_m1_anonymized.png").exists()

    app_codes, app_meta = _latents(tmp_path / "app" / "wplus.safetensors")
    cli_codes, cli_meta = _latents(tmp_path / "cli" / "x.png.latents.safetensors")
    assert app_meta == cli_meta == {"what": WPLUS_FILE_METADATA}
    assert app_codes.keys() == cli_codes.keys() == {"wplus", "wplus_inversion", "face", "margin", "fake_index"}
    for name in app_codes:
        assert torch.equal(app_codes[name], cli_codes[name]), name
    assert app_codes["wplus"].shape == (2, 3, 10, 64) and app_codes["wplus"].dtype == torch.float32
    for i, f in enumerate(result.faces):   # faces x margins, face-major
        assert torch.equal(app_codes["wplus"][i // 3, i % 3], f.wplus)
    assert torch.equal(app_codes["wplus_inversion"], torch.stack([torch.full((10, 64), -f - 1.0) for f in faces]))
    assert app_codes["face"].tolist() == [1, 3] and app_codes["fake_index"].tolist() == [3, 5]
    assert app_codes["margin"].tolist() == list(margins)


def test_session_keeps_detections_and_removes_its_files(tmp_path):
    uploads = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in uploads:
        path.write_bytes(b"x")
    session = sessions.Session(photo=str(uploads[0]), detections=["face"])
    for path in uploads:
        session.hold(str(path))
    assert session.detections_for(str(uploads[0])) == ["face"] and session.detections_for(str(uploads[1])) is None
    first, second = session.new_folder(tmp_path / "cache", "run"), session.new_folder(tmp_path / "cache", "run")
    photo = session.new_folder(tmp_path / "cache", "photo")
    assert first != second and first.parent == photo.parent == Path(session.folder)
    session.drop_others(second)   # a finished run: the earlier runs' files go, the photo's stay
    assert not first.exists() and second.is_dir() and photo.is_dir()
    sessions.end_session(session)
    assert not any(p.exists() for p in uploads) and not session.uploads and not photo.parent.exists()


def test_shared_files_go_with_their_last_holder(tmp_path):
    shared = tmp_path / "same-content" / "photo.png"
    shared.parent.mkdir()
    shared.write_bytes(b"x")
    first, second = sessions.Session(), sessions.Session()
    for session in (first, second, first):   # holding twice counts once
        session.hold(str(shared))
    first.forget()
    assert shared.exists()
    second.forget()
    assert not shared.exists()


def test_a_photo_gone_is_a_message_without_its_path(tmp_path):
    with pytest.raises(FalcoError) as caught:
        sessions.read_photo(str(tmp_path / "gone.png"))
    assert str(caught.value) == messages.PHOTO_GONE


def test_zerogpu_wraps_only_the_gpu_work_for_the_time_its_settings_need(monkeypatch):
    calls = []

    def gpu(duration):   # as spaces.GPU: the duration callable gets the wrapped function's own arguments
        def wrap(fn):
            def wrapped(*args, **kwargs):
                calls.append(duration(*args, **kwargs))
                yield from fn(*args, **kwargs)
            return wrapped
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    monkeypatch.setenv(device.ZEROGPU_ENV, "true")
    pipeline = SimpleNamespace(anonymize=lambda photo, **kw: iter(["event"]))
    loader = engine.EngineLoader(lambda: pipeline)
    zerogpu = ZeroGpuConfig(floor_s=1, cap_s=1000)
    demo, app = page.build_app(loader=loader, config=AppConfig(zerogpu=zerogpu), load_now=False)
    assert app.on_gpu   # ZeroGPU means CUDA even though this machine has none
    short = form.RunSettings((0,), (0.0,), OptimConfig(steps=10), False)
    long = form.RunSettings((0, 1), (0.0, 0.5), OptimConfig(steps=100), False)
    for settings in (short, long):
        assert list(app._device_run(Image.new("RGB", (8, 8)), settings)) == ["event"]
    assert calls == [gpu_slots.slot_seconds(zerogpu, gpu_slots.photo_work_seconds(zerogpu, 10, 1, 1)),
                     gpu_slots.slot_seconds(zerogpu, gpu_slots.photo_work_seconds(zerogpu, 100, 2, 2))]
    assert calls[0] < calls[1]


def test_spaces_package_alone_is_not_zerogpu(monkeypatch):
    """Spaces of every kind may have the package: a CPU Space must not be sent to CUDA."""
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=lambda duration: pytest.fail("wrapped")))
    monkeypatch.delenv(device.ZEROGPU_ENV, raising=False)
    demo, app = page.build_app(loader=engine.EngineLoader(object), load_now=False)
    assert app.on_gpu == torch.cuda.is_available() and not device.zerogpu_available()


def test_cpu_notice_and_defaults(monkeypatch):
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    monkeypatch.setattr(page, "zerogpu_slots", lambda config: None)
    config = AppConfig(cpu_optim=OptimConfig(steps=6))
    demo, app = page.build_app(loader=engine.EngineLoader(object), device="cpu", config=config, load_now=False)
    assert not app.on_gpu and app.default_optim.steps == 6
    assert "Running on CPU" in app.status_text()


@pytest.mark.slow
def test_margin_plot_draws_each_face_against_m_with_dlibs_threshold():
    result = _result([0.0, 0.5, 1.0], faces=(0, 2))
    cosine_axes, distance_axes = render.margin_plot(result).axes
    assert [line.get_label() for line in cosine_axes.get_lines()] == ["face 1", "face 3"]
    for axes, field in ((cosine_axes, "identity_cosine"), (distance_axes, "recognizer_distance")):
        for line, face in zip(axes.get_lines(), (0, 2)):
            rows = [r for r in result.faces if r.face_index == face]
            assert list(line.get_xdata()) == [r.margin for r in rows]
            assert list(line.get_ydata()) == [getattr(r, field) for r in rows]
    threshold = distance_axes.get_lines()[-1]
    assert set(threshold.get_ydata()) == {DLIB_SAME_PERSON_DISTANCE}
