"""The Video tab of the real app (`python app.py`, tiny random weights, CPU) in headless Chromium: a clip
uploaded, the stages' progress, the anonymized clip and its downloads."""

from pathlib import Path

import pytest
from PIL import Image

from falco.video.io import probe_video
from falco.video.synthetic import pan_zoom_frames, write_clip
from tests.browser_support import ARTIFACTS, BROWSER_MARKS, open_page

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def clip(astronaut, tmp_path_factory) -> Path:
    frames = pan_zoom_frames(Image.open(astronaut), 8, (256, 256))
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=8, codec="libx264",
                      pix_fmt="yuv420p", audio_codec="aac")


def test_video_tab_anonymizes_a_clip(browser, app_url, clip, gradio_cache):
    page = open_page(browser, app_url)
    try:
        page.locator("#falco-status").get_by_text("The networks are loaded").wait_for()
        page.get_by_role("tab", name="Video").click()
        assert "at most 3 s" in page.locator("#falco-video-limit").inner_text()   # the CPU limit, stated
        page.get_by_text("Live webcam").click()
        page.locator("#falco-webcam-none").get_by_text("needs a GPU").wait_for()
        page.locator("#falco-video-in input[type=file]").set_input_files(str(clip))
        page.locator("#falco-video-in video").wait_for(state="attached")
        page.locator("#falco-video-run").click()
        page.locator("#falco-video-stages").get_by_text("Finding and tracking the faces").wait_for()
        page.locator("#falco-video-stages").get_by_text("Done in").wait_for()
        stages = page.locator("#falco-video-stages").inner_text()
        assert "person 1 of 1" in stages and "Rendering the frames" in stages and "8/8" in stages
        page.locator("#falco-video-out video").wait_for(state="attached")
        page.wait_for_function("() => document.querySelector('#falco-video-downloads')?.innerText.includes('json')")
        downloads = page.locator("#falco-video-downloads").inner_text()
        assert "anonymized" in downloads and ".mp4" in downloads
        written = [p for p in gradio_cache.rglob("anonymized.mp4") if "falco-session-" in str(p)]
        assert len(written) == 1 and probe_video(written[0]).frames == 8
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "video_tab.png"), full_page=True)
    finally:
        page.close()
