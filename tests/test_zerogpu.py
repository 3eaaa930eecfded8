"""ZeroGPU slots sized to the work, runs one call cannot do refused before they ask, and ZeroGPU's refusals told
in the page's own words (falco.ui.gpu_slots, falco.ui.messages), with a stand-in `spaces` package."""

import html
import sys
import types
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from falco import device
from falco.config import AppConfig, OptimConfig, ZeroGpuConfig
from falco.errors import FalcoError
from falco.ui import engine, form, messages, page, sessions
from falco.ui.gpu_slots import (
    ClipSize,
    ZeroGpuSlots,
    clip_work_seconds,
    max_clip_frames,
    photo_work_seconds,
    slot_seconds,
)
from falco.video.synthetic import EXAMPLE_CLIP

ROUND = ZeroGpuConfig(cap_s=120, floor_s=20, margin=1.5, start_s=10.0, step_s=0.1, step_item_s=0.02, face_s=1.0,
                      frame_megapixel_s=2.0, frame_face_s=0.1, clip_persons=1)

# What `spaces` 0.51 raises (spaces.zero.client.schedule, spaces.zero.wrappers): gr.Errors with these titles.
QUOTA = ("ZeroGPU quota exceeded", "You have exceeded your free ZeroGPU quota (39s requested vs. 12s left). "
                                   "Try again in 0:03:27. ")


def test_a_photo_runs_slot_grows_with_steps_faces_and_m_with_a_margin_and_a_floor():
    # 10 s to start, 1 s per face, steps x (0.1 s + 0.02 s per further item).
    assert photo_work_seconds(ROUND, 50, 2, 5) == pytest.approx(10 + 2 + 50 * (0.1 + 9 * 0.02))
    assert slot_seconds(ROUND, photo_work_seconds(ROUND, 50, 2, 5)) == 39   # 26 s x 1.5
    assert slot_seconds(ROUND, photo_work_seconds(ROUND, 1, 1, 1)) == ROUND.floor_s
    assert slot_seconds(ROUND, 10_000) == ROUND.cap_s
    base = photo_work_seconds(ROUND, 50, 1, 1)
    assert base < photo_work_seconds(ROUND, 100, 1, 1)
    assert base < photo_work_seconds(ROUND, 50, 2, 1) < photo_work_seconds(ROUND, 50, 2, 2)


def test_the_default_settings_ask_for_less_than_the_cap():
    config = ZeroGpuConfig()
    run = slot_seconds(config, photo_work_seconds(config, OptimConfig().steps, 1, 1))
    compare = slot_seconds(config, photo_work_seconds(config, OptimConfig().steps, 1, len(AppConfig().compare_margins)))
    assert config.floor_s <= run < compare < config.cap_s


def test_a_clips_slot_follows_its_frames_and_pixels():
    small = ClipSize(frames=30, width=640, height=360, steps=50)
    assert clip_work_seconds(ROUND, small) == pytest.approx(10 + (1 + 50 * 0.1) + 30 * (0.2304 * 2.0 + 0.1))
    assert clip_work_seconds(ROUND, small) < clip_work_seconds(ROUND, ClipSize(60, 640, 360, 50))
    assert clip_work_seconds(ROUND, small) < clip_work_seconds(ROUND, ClipSize(30, 1280, 720, 50))


def test_the_longest_clip_one_call_can_do_fits_and_one_frame_more_does_not():
    slots = ZeroGpuSlots(gpu=None, config=ROUND)
    most = max_clip_frames(ROUND, 640, 360, 50)
    assert most > 0 and clip_work_seconds(ROUND, ClipSize(most, 640, 360, 50)) <= ROUND.cap_s
    slots.check_clip(ClipSize(most, 640, 360, 50))
    with pytest.raises(FalcoError, match=f"can do about {most} at that size"):
        slots.check_clip(ClipSize(most + 1, 640, 360, 50))
    assert f"about {most} frames at 640x360" in slots.clip_limit_text(50)


def test_a_photo_run_over_the_cap_is_refused_before_it_asks():
    slots = ZeroGpuSlots(gpu=None, config=ROUND)
    slots.check_photo(form.RunSettings((0,), (0.0,), OptimConfig(steps=50), False))
    with pytest.raises(FalcoError, match="fewer steps, faces or m values"):
        slots.check_photo(form.RunSettings(tuple(range(6)), (0.0, 0.25, 0.5, 0.75, 1.0), OptimConfig(steps=200),
                                           False))   # 6 faces x 5 m x 200 steps: 152 s expected


def test_faces_not_searched_yet_are_sized_as_assumed():
    slots = ZeroGpuSlots(gpu=None, config=ROUND)
    unknown = form.RunSettings(None, (0.0,), OptimConfig(steps=50), False)
    assert slots.photo_work(unknown) == photo_work_seconds(ROUND, 50, ROUND.assumed_faces, 1)


@pytest.mark.parametrize("title, message, expected", [
    (*QUOTA, messages.ZEROGPU_QUOTA.format(asked=39, left=12, wait="3 min 27 s")),
    ("ZeroGPU quota exceeded", "You have exceeded your ZeroGPU runs limit. ", messages.ZEROGPU_RUNS),
    ("ZeroGPU quota exceeded", "Space app has reached its GPU limit. Try re-running outside of examples",
     messages.ZEROGPU_SPACE_QUOTA),
    ("ZeroGPU quota exceeded", "No GPU was available after 60s. Try re-running outside of examples",
     messages.ZEROGPU_BUSY),
    ("ZeroGPU queue timeout", "No GPU was available after 60s. Retry later", messages.ZEROGPU_BUSY),
    ("ZeroGPU client error", "No GPU was available", messages.ZEROGPU_BUSY),
    ("ZeroGPU illegal duration", "The requested GPU duration (300s) is larger than the maximum allowed",
     messages.ZEROGPU_TOO_LONG),
    ("ZeroGPU pending credits exceeded", "You have too many ZeroGPU credits allocated", messages.ZEROGPU_PENDING),
    ("ZeroGPU worker error", "GPU task aborted", messages.ZEROGPU_ABORTED),
])
def test_each_zerogpu_refusal_has_the_pages_own_line(title, message, expected):
    assert messages.zerogpu_refusal(gr.Error(message, title=title)) == expected
    assert messages.describe_error(gr.Error(message, title=title)) == expected


def test_other_errors_are_no_zerogpu_refusal():
    assert messages.zerogpu_refusal(gr.Error("Upload a clip first.")) is None
    assert messages.zerogpu_refusal(ValueError("ZeroGPU")) is None
    assert messages.readable_wait("1 day, 2:00:05") == "1 d 2 h 5 s"


def refusing_spaces(asked: list) -> types.SimpleNamespace:
    """A stand-in `spaces` whose GPU sizes each call as the real one does, then refuses it: quota used up."""
    def gpu(duration):
        def wrap(fn):
            def wrapped(*args, **kwargs):
                asked.append(duration(*args, **kwargs))
                raise gr.Error(QUOTA[1], title=QUOTA[0])
                yield   # a generator, as the wrapped function
            return wrapped
        return wrap
    return types.SimpleNamespace(GPU=gpu)


@pytest.fixture
def refused_app(monkeypatch):
    asked: list = []
    monkeypatch.setitem(sys.modules, "spaces", refusing_spaces(asked))
    monkeypatch.setenv(device.ZEROGPU_ENV, "true")   # as falco.device reads it
    pipeline = SimpleNamespace(anonymize=lambda photo, **kw: pytest.fail("ran after a refusal"))
    demo, app = page.build_app(loader=engine.EngineLoader(lambda: pipeline), config=AppConfig(zerogpu=ROUND),
                               load_now=False)
    return app, asked


def test_a_photo_run_refused_for_quota_says_so_and_when_to_retry(refused_app):
    app, asked = refused_app
    settings = form.RunSettings((0,), (0.0,), OptimConfig(steps=50), False)
    with pytest.raises(gr.Error) as caught:
        list(app.stream(Image.new("RGB", (8, 8)), settings))
    assert caught.value.message == messages.ZEROGPU_QUOTA.format(asked=39, left=12, wait="3 min 27 s")
    assert "\n" not in caught.value.message and "try again in 3 min 27 s" in caught.value.message
    assert asked == [slot_seconds(ROUND, photo_work_seconds(ROUND, 50, 1, 1))]


def test_a_clip_refused_for_quota_shows_the_line_in_the_tab(refused_app, tmp_path):
    app, asked = refused_app
    tab, session = app.video_tab, sessions.Session()
    session.ask_run()
    updates = tab.run(str(EXAMPLE_CLIP), 0.0, session)
    shown = next(updates)[tab.progress]
    with pytest.raises(gr.Error) as caught:
        next(updates)
    line = messages.ZEROGPU_QUOTA.format(asked=39, left=12, wait="3 min 27 s")
    assert caught.value.message == line and html.escape(line) in shown
    size = ClipSize(10, 320, 320, app.default_optim.steps)   # the example: 10 frames of 320x320
    assert asked == [slot_seconds(ROUND, clip_work_seconds(ROUND, size))]
    session.forget()
