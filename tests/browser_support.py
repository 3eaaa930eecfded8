"""What the browser tests share: Debian's Chromium through Playwright, and `python app.py` served to it.

Registered as a pytest plugin by tests/conftest.py.  Both fixtures live as long as the module that uses them, so
that no app process or browser stays resident through the rest of the run.  Needs Debian's chromium
(apt-get install chromium); Playwright never downloads a browser here.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("FALCO_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# Without the networking flags Chromium keeps dialling Google's hosts from a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
BROWSER_MARKS = [pytest.mark.browser,
                 pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian chromium not installed at {CHROMIUM} "
                                                                 "(apt-get install chromium)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_page(browser, url: str, width: int = 1400, height: int = 1800):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(180_000)
    page.goto(url)
    return page


@pytest.fixture(scope="module")
def gradio_cache(tmp_path_factory) -> Path:
    """GRADIO_TEMP_DIR of the session's app process: its uploads and each visitor's files."""
    return tmp_path_factory.mktemp("gradio-cache")


@pytest.fixture(scope="module")
def app_url(tiny_weights, tmp_path_factory, gradio_cache):
    """`python app.py` on the tiny weights, on the CPU, served to the module's tests."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    # GRADIO_IS_E2E_TEST: Gradio drops a closed tab's state after 1 s instead of an hour.
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           "GRADIO_TEMP_DIR": str(gradio_cache), "GRADIO_IS_E2E_TEST": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "app.py", "--weights", str(tiny_weights), "--device", "cpu",
                                    "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300   # imports take a while on a busy machine
        while True:
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"app.py did not serve {url}:\n{log.read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Playwright's sync API allows one per thread at a time)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
