"""The real app (`python app.py`) in headless Chromium: upload, run, streamed previews,
results, Stop; the Video tab's clip.  Needs Debian's chromium (apt-get install chromium); Playwright never
downloads a browser here."""

import time
from pathlib import Path

import pytest
from PIL import Image

from falco.ui.messages import RUN_GOING
from falco.video.io import probe_video
from falco.video.synthetic import pan_zoom_frames, write_clip
from tests.browser_support import ARTIFACTS, BROWSER_MARKS, free_port, open_page

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def page(browser, app_url):
    page = open_page(browser, app_url)
    yield page
    page.close()


def set_steps(page, steps: int) -> None:
    box = page.locator("#falco-steps input[type=number]")
    box.fill(str(steps))
    box.press("Enter")


def start_run(page) -> None:
    """Click Run until a run starts: a click that lands while the previous run is still
    closing is ignored by the page (each button runs one job at a time)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    before = page.locator("#falco-progress-box").inner_text()
    for _ in range(5):
        page.locator("#falco-run").click()
        try:
            page.wait_for_function("before => document.querySelector('#falco-progress-box').innerText !== before",
                                   arg=before, timeout=15_000)
            return
        except PlaywrightTimeout:
            continue
    pytest.fail("clicking Run did not start a run")


def test_upload_run_stream_and_results(page, fixtures_dir):
    page.locator("#falco-status").get_by_text("The networks are loaded").wait_for()
    page.locator("#falco-photo input[type=file]").set_input_files(str(fixtures_dir / "align" / "astronaut.png"))
    page.locator("#falco-faces-text").get_by_text("usable").wait_for()
    assert page.locator("#falco-picked input[type=checkbox]:checked").count() == 1
    page.get_by_text("Advanced").click()
    set_steps(page, 4)
    # Every distinct image the live preview shows while the run streams.
    page.evaluate("""() => { window.falcoPreviews = new Set();
        new MutationObserver(() => document.querySelectorAll('#falco-live img')
            .forEach(img => window.falcoPreviews.add(img.src)))
          .observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']}); }""")
    start_run(page)
    page.locator("#falco-progress").get_by_text("Done").wait_for()
    assert page.evaluate("() => window.falcoPreviews.size") >= 2
    # The results render as they arrive: wait for each rather than count at once.
    for caption in ("Face 1: original", "Face 1: e4e inversion", "Face 1: fake neighbour", "Face 1: anonymized"):
        page.locator("#falco-gallery").get_by_text(caption).first.wait_for()
    page.locator("#falco-result img").wait_for()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_results.png"), full_page=True)
    # Table cells and file rows are laid out lazily: attached is what counts, not "visible".
    page.locator("#falco-metrics").get_by_text("person").first.wait_for(state="attached")   # recogniser's verdict
    page.wait_for_function("() => document.querySelector('#falco-downloads')?.innerText.includes('wplus')")
    downloads = page.locator("#falco-downloads").inner_text()
    assert all(name in downloads for name in ("photo_m0", "wplus", "safetensors", "run", "json"))
    remove = page.locator("#falco-downloads .label-clear-button")   # the list offers no "remove" on downloads
    assert remove.count() >= 2 and not any(remove.nth(i).is_visible() for i in range(remove.count()))
    assert page.locator("#falco-gallery img").count() >= 4
    with Image.open(ARTIFACTS / "app_results.png") as shot:   # a picture of the page, not an empty file
        assert shot.format == "PNG" and min(shot.size) >= 200


def progress_value(page) -> int:
    page.locator("#falco-progress progress").wait_for()   # a run under way
    return int(page.locator("#falco-progress progress").get_attribute("value"))



def test_compare_then_the_m_slider_browses_the_results(page):
    """After Compare m, moving the m slider shows the photo, faces and figures of the computed m nearest to it."""
    set_steps(page, 1)
    page.locator("#falco-compare").click()
    page.locator("#falco-progress").get_by_text("Done: 1 steps").wait_for()
    page.locator("#falco-plot").wait_for()   # identity against m
    # Every tile's caption reads in full: one row of six tiles cut them to "m = 0 (cosi..." before.
    page.locator("#falco-gallery").get_by_text("m = 0.25, cosine").first.wait_for()
    captions = page.evaluate("() => [...document.querySelectorAll('#falco-gallery .caption-label')]"
                             ".map(e => [e.innerText, e.scrollWidth <= e.clientWidth])")
    assert len(captions) >= 6 and all(whole for _, whole in captions), captions
    margin = page.locator("#falco-margin input[type=number]")
    for wanted, shown in (("0.5", "m = 0.5"), ("0.6", "m = 0.5 (the computed m nearest to 0.6)"), ("1", "m = 1")):
        margin.fill(wanted)
        margin.press("Enter")
        page.wait_for_function("shown => document.querySelector('#falco-result').innerText.includes(shown)",
                               arg=shown)
        page.locator("#falco-gallery").get_by_text(f"Face 1, {shown.split(' (')[0]}:").first.wait_for()
    # Before | after, on the photo then on a face; it follows the m slider too.
    slider = page.locator("#falco-before-after")
    page.wait_for_function("() => document.querySelector('#falco-before-after').innerText.includes("
                           "'Photo: original | anonymized, m = 1')")
    assert slider.locator("img").count() == 2
    page.locator("#falco-shown").get_by_text("Face 1").click()
    page.wait_for_function("() => document.querySelector('#falco-before-after').innerText.includes("
                           "'Face 1: original | anonymized, m = 1')")
    margin.fill("0.25")
    margin.press("Enter")
    page.wait_for_function("() => document.querySelector('#falco-before-after').innerText.includes("
                           "'Face 1: original | anonymized, m = 0.25')")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "compare_desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})   # a phone
    page.screenshot(path=str(ARTIFACTS / "compare_phone.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1800})

def test_stop_ends_a_run(page, browser, app_url, fixtures_dir):
    page.locator("#falco-status").get_by_text("The networks are loaded").wait_for()
    set_steps(page, 200)
    start_run(page)
    page.wait_for_function("() => Number(document.querySelector('#falco-progress progress')?.value) >= 2")
    # Run clicked again during the run: the page says one is going, and the run goes on.
    page.locator("#falco-run").click()
    page.get_by_text(RUN_GOING).first.wait_for()
    going = progress_value(page)
    page.wait_for_function("going => Number(document.querySelector('#falco-progress progress')?.value) > going",
                           arg=going)
    # Another visitor's run waits in line behind it and says so in its progress box.
    other = open_page(browser, app_url)
    other.locator("#falco-photo input[type=file]").set_input_files(str(fixtures_dir / "align" / "astronaut.png"))
    other.locator("#falco-faces-text").get_by_text("usable").wait_for()
    other.get_by_text("Advanced").click()
    set_steps(other, 1)
    other.locator("#falco-run").click()
    other.locator("#falco-progress").get_by_text("Waiting in line: yours is next").wait_for()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    other.screenshot(path=str(ARTIFACTS / "waiting_in_line.png"))
    page.locator("#falco-stop").click()
    page.locator("#falco-progress").get_by_text("Stopped after step").wait_for()
    # The run's own last update says "Stopped": it stays, with the step it stopped at, and nothing moves.
    stopped = page.locator("#falco-progress").inner_text()
    page.wait_for_timeout(3000)   # several steps' worth of time, were the run still going
    assert page.locator("#falco-progress").inner_text() == stopped and stopped.startswith("Stopped after step")
    assert page.locator("#falco-progress").get_by_text("Done").count() == 0
    other.locator("#falco-progress").get_by_text("Done").wait_for()   # its turn came
    other.close()
    # The GPU slot is free again: a short run goes through.
    set_steps(page, 2)
    start_run(page)
    page.locator("#falco-progress").get_by_text("Done").wait_for()


def test_uploads_and_results_are_removed_when_the_session_ends(browser, app_url, gradio_cache, fixtures_dir,
                                                                tmp_path):
    photo = tmp_path / "only-this-session.png"
    photo.write_bytes((fixtures_dir / "align" / "astronaut.png").read_bytes())
    before = set(gradio_cache.glob("falco-session-*"))
    page = open_page(browser, app_url)
    page.locator("#falco-photo input[type=file]").set_input_files(str(photo))
    page.locator("#falco-faces-text").get_by_text("usable").wait_for()
    page.get_by_text("Advanced").click()
    set_steps(page, 1)
    start_run(page)
    page.locator("#falco-progress").get_by_text("Done").wait_for()
    uploaded = list(gradio_cache.rglob(photo.name))
    shown = [f for folder in set(gradio_cache.glob("falco-session-*")) - before for f in folder.rglob("*.png")]
    assert uploaded and any(f.name == "face1_aligned.png" for f in shown)   # this visitor's face, in its folder
    uploaded += shown
    page.close()
    for _ in range(240):
        if not any(p.exists() for p in uploaded):
            break
        time.sleep(0.25)
    assert not any(p.exists() for p in uploaded)


def test_a_first_start_shows_what_it_prepares_then_the_page_becomes_usable(browser, tiny_weights, monkeypatch):
    """Nothing published: the page is served at once and says what the preparation of the weights is doing,
    then becomes usable by itself (the preparation itself is falco.weights.prepare's, tested there)."""
    import threading

    from falco.ui import startup
    from falco.weights import prepare

    go = threading.Event()

    def preparing(device=None, progress=None, **kwargs):
        for fraction in (0.2, 0.48):
            progress(prepare.PrepareProgress("downloading", "ArcFace", 2, 5, fraction))
        assert go.wait(300)
        return tiny_weights

    monkeypatch.setattr(startup, "prepare_weights", preparing)
    monkeypatch.delenv("FALCO_WEIGHTS_REPO", raising=False)
    demo, _ = startup.start_app(weights=None, device="cpu", host="127.0.0.1", port=free_port(), quiet=True,
                                prevent_thread_lock=True)
    try:
        page = open_page(browser, demo.local_url)
        status = page.locator("#falco-status")
        status.get_by_text("Preparing the models on first start: downloading ArcFace (2 of 5), 48%").wait_for()
        status.locator(".falco-dot.falco-loading").wait_for()   # drawn by CSS: no emoji font needed
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "first-start.png"))
        go.set()
        status.get_by_text("The networks are loaded").wait_for()
        status.locator(".falco-dot.falco-ready").wait_for()
        page.close()
    finally:
        go.set()
        demo.close()


# -- the Video tab --
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
