"""report.html of python -m falco.evaluate in headless Chromium: one file that shows everything offline (the random
judges' warning, the table with the paper's rows, the plots, the example grid with names, a wide photo kept wide).
Needs Debian's chromium (apt-get install chromium)."""

from functools import partial
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from falco.evaluate.data import Anonymized, EvaluationSet, Original
from falco.evaluate.metrics import IDENTITY_JUDGES
from falco.evaluate.report import write_html
from tests.browser_support import ARTIFACTS, BROWSER_MARKS

pytestmark = BROWSER_MARKS


def figures_for(margins) -> dict:
    """metrics.json's figures, made up (tests/test_evaluate.py checks the real ones): what the page lays out."""
    return {"input": {"kind": "cli output", "aligned": False, "originals": 2, "anonymized": 2 * len(margins),
                      "skipped": {}, "no_face_in_original": 0, "identity_labels": False, "attributes": ["Smiling"],
                      "probe_held_out": 1},
            "original": {"images": 2, "detection_percent": {"dlib": 100.0, "mtcnn": 50.0}, "attribute_accuracy": 0.9},
            "margins": [{"margin": m, "images": 2, "fid": 10.0 + i, "detection_percent": {"dlib": 50.0, "mtcnn": 0.0},
                         "reid_percent": {judge: 10.0 * i for judge in IDENTITY_JUDGES}, "attribute_accuracy": 0.75,
                         "landmark_error": 0.05, "reid_chance_percent": 50.0} for i, m in enumerate(margins)],
            "settings": [{"set": None, "method": ["falco"], "margins": [margins], "steps": [100]}],
            "judges": {"facenet_casia": {"network": "FaceNet", "file": "casia.pt", "sha256": "0" * 64,
                                         "origin": "random"}}}


@pytest.fixture
def report(tmp_path, astronaut) -> Path:
    face = Image.open(astronaut).convert("RGB").resize((128, 128))
    wide = Image.new("RGB", (600, 200), (90, 100, 110))
    wide.paste(face, (236, 36))
    images = {"x.png": wide, "y.png": ImageOps.mirror(face)}
    margins = [0.0, 0.5]
    data = EvaluationSet("cli output", [Original(key, partial(image.copy)) for key, image in images.items()],
                         [Anonymized(key, m, partial(image.rotate, 90 * (i + 1)))
                          for key, image in images.items() for i, m in enumerate(margins)])
    return write_html(figures_for(margins), data, tmp_path)


def test_report_opens_offline_with_table_plots_and_examples(report, browser):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    try:
        fetched = []
        page.on("request", lambda request: fetched.append(request.url))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        # Self-contained: the page asks for nothing but itself (pictures are data: URIs).
        assert [url for url in fetched if not url.startswith("data:")] == [report.as_uri()]
        # Random judges: said first, before any figure.
        assert "RANDOM JUDGES" in page.locator("div.random").first.inner_text()
        assert page.locator("div.random").first.bounding_box()["y"] < page.locator("table.figures").bounding_box()["y"]
        assert "steps 100" in page.locator("table.settings").inner_text()
        rows = page.locator("table.figures tbody tr")
        assert rows.count() == 1 + 2 + 2
        assert page.locator("table.figures tr.paper").count() == 2
        assert "29.93" in page.locator("table.figures").inner_text()
        assert page.locator(".plots img").count() == 6
        assert page.locator("table.examples tbody tr").count() == 2
        first = page.locator("table.examples tbody tr").first
        assert first.locator("img").count() == 3 and first.locator("th").inner_text() == "x.png"   # named
        # The wide photo is as high as the others and keeps its width (not shrunk to the grid's 160 px).
        box = first.locator("img").first.bounding_box()
        assert box["height"] == 160 and box["width"] == 480
        # Every picture decoded and shown with its size.
        broken = page.evaluate("() => [...document.images].filter(i => !i.complete || !i.naturalWidth).length")
        assert broken == 0 and page.evaluate("() => document.images.length") == 6 + 2 * 3
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "evaluation_report.png"), full_page=True)
    finally:
        page.close()
