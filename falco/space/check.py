"""Checking a deployed Space as a visitor would: it runs, its page answers, its models load, the example anonymizes.

``check`` takes a Space id (``user/name``: the Hub is asked for its runtime until it runs) or the URL of any
running app (a Space's page on the Hub, its ``*.hf.space`` host, or a local ``python app.py``), and returns the
time each stage took; a failure is a SpaceError whose one line says which stage failed and why.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falco.config import OptimConfig, SpaceConfig
from falco.errors import first_line
from falco.space.folder import SpaceError, check_repo_id, hub_errors
from falco.weights.hub import is_repo_id

# The page's own example photo (falco.ui.layout.EXAMPLES), read here without importing Gradio.
EXAMPLE_PHOTO = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
STATUS_ELEM_ID = "falco-status"          # the banner's elem_id (falco.ui.layout)
API_NAME = "/anonymize"                  # falco.ui.api.API_NAME
HUB_SPACE_URL = re.compile(r"^https?://(?:www\.)?huggingface\.co/spaces/(?P<id>[^/?#]+/[^/?#]+)/?(?:[?#].*)?$")
STATUS_STATE = re.compile(r'class="falco-dot falco-(?P<state>\w+)"[^>]*></span>\s*(?P<line>[^\n]*)')
FAILED_STAGES = {"BUILD_ERROR": "its build failed", "RUNTIME_ERROR": "it stopped with an error",
                 "CONFIG_ERROR": "its README's front matter is wrong", "NO_APP_FILE": "it has no app file",
                 "PAUSED": "it is paused (restart it on the Hub)", "STOPPED": "it is stopped (restart it on the Hub)",
                 "DELETING": "it is being deleted"}


@dataclass(frozen=True)
class Target:
    url: str | None            # the app's address; None until the Hub names the Space's host
    space_id: str | None       # a Space on the Hub: its runtime is waited for


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    detail: str


def parse_target(target: str) -> Target:
    """A Space id or URL; a Space's Hub page is its id."""
    target = target.strip()
    hub_page = HUB_SPACE_URL.match(target)
    if hub_page:
        return Target(None, hub_page["id"])
    if target.startswith(("http://", "https://")):
        return Target(target.rstrip("/") + "/", None)
    if not is_repo_id(target):
        raise SpaceError(f"{target!r} is neither a Space id (user/name) nor a URL.")
    check_repo_id(target, "Space")   # its owner named
    return Target(None, target)


def wait_until_running(api: Any, space_id: str, timeout_s: float, poll_s: float) -> tuple[str, str]:
    """Polls the Space's runtime until it runs: (its hardware, the stages it went through)."""
    deadline, stages = time.monotonic() + timeout_s, []
    while True:
        try:
            runtime = api.get_space_runtime(space_id)
        except hub_errors() as err:
            raise SpaceError(f"The Hub does not show the Space {space_id} ({first_line(err)}).") from err
        if not stages or stages[-1] != runtime.stage:
            stages.append(runtime.stage)
        if runtime.stage == "RUNNING":
            return runtime.hardware or "unknown hardware", " -> ".join(stages)
        if runtime.stage in FAILED_STAGES:
            reason = runtime.raw.get("errorMessage")
            raise SpaceError(f"{space_id} does not run: {FAILED_STAGES[runtime.stage]}"
                             + (f" ({first_line(Exception(reason))})." if reason else "."))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SpaceError(f"{space_id} was still {runtime.stage} after {timeout_s:.0f} s.")
        time.sleep(min(poll_s, remaining))


def space_host(api: Any, space_id: str) -> str:
    """The address the Space's app answers on (``https://user-name.hf.space``)."""
    try:
        info = api.space_info(space_id)
    except hub_errors() as err:
        raise SpaceError(f"The Hub does not show the Space {space_id} ({first_line(err)}).") from err
    if info.host:
        return info.host.rstrip("/") + "/"
    if info.subdomain:
        return f"https://{info.subdomain}.hf.space/"
    raise SpaceError(f"The Hub names no host for {space_id}.")


def status_endpoint(config: dict) -> int:
    """The id of the event that fills the banner when the page loads (the browser's own call)."""
    banner = [c["id"] for c in config.get("components", []) if c.get("props", {}).get("elem_id") == STATUS_ELEM_ID]
    for dependency in config.get("dependencies", []):
        loads = any(event == "load" for _, event in dependency.get("targets", []))
        if loads and banner and banner[0] in dependency.get("outputs", []):
            return dependency["id"]
    raise SpaceError("The page has no FALCO status line: is this address a FALCO app?")


def read_status(http: Any, url: str, fn_index: int) -> tuple[str, str]:
    """(state, line) of the banner: "ready", "loading" or "failed", and its first line of text."""
    import httpx

    try:
        answer = http.post(url + "gradio_api/run/predict",
                           json={"fn_index": fn_index, "data": [], "session_hash": uuid.uuid4().hex})
        value = answer.json()["data"][0] if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as err:
        raise SpaceError(f"The page's status line did not answer ({first_line(err)}).") from err
    if answer.status_code != 200:
        raise SpaceError(f"The page's status line did not answer (HTTP {answer.status_code}).")
    text = value.get("value", "") if isinstance(value, dict) else str(value)
    found = STATUS_STATE.search(text)
    if not found:
        raise SpaceError(f"The page's status line is not FALCO's: {first_line(Exception(text))}")
    return found["state"], found["line"].strip()


def check(target: str, *, steps: int | None = None, margins: str | None = None, config: SpaceConfig = SpaceConfig(),
          api: Any = None, token: str | None = None, say: Callable[[str], None] = print) -> list[Stage]:
    """Runs every stage in turn and says each as it ends; returns them all.  The first failure raises."""
    import httpx

    run_steps = steps if steps is not None else config.check_steps
    margins = margins if margins is not None else config.check_margins
    where = parse_target(target)
    stages: list[Stage] = []

    def done(name: str, start: float, detail: str) -> None:
        stages.append(Stage(name, time.monotonic() - start, detail))
        say(f"{name:<10} {stages[-1].seconds:7.1f} s  {detail}")

    url = where.url
    if where.space_id is not None:
        from huggingface_hub import HfApi, get_token
        api = api or HfApi()
        token = token or get_token()
        start = time.monotonic()
        hardware, seen = wait_until_running(api, where.space_id, config.runtime_timeout_s, config.poll_s)
        url = space_host(api, where.space_id)
        done("running", start, f"{where.space_id} on {hardware} ({seen}), {url}")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=config.http_timeout_s, headers=headers, follow_redirects=True) as http:
        start = time.monotonic()
        try:
            page = http.get(url)
            settings = http.get(url + "config").json() if page.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as err:
            raise SpaceError(f"{url} does not answer ({first_line(err)}).") from err
        if settings is None:
            raise SpaceError(f"{url} answers HTTP {page.status_code}, not the page.")
        done("page", start, f"HTTP 200, {len(page.content)} bytes")

        start, fn_index = time.monotonic(), status_endpoint(settings)
        state, line = read_status(http, url, fn_index)
        deadline = start + config.ready_timeout_s
        while state == "loading" and time.monotonic() < deadline:
            time.sleep(min(config.poll_s, max(0.0, deadline - time.monotonic())))
            state, line = read_status(http, url, fn_index)
        if state != "ready":
            raise SpaceError(f"The models are not ready ({state}): {line}")
        done("models", start, line)

    start = time.monotonic()
    record = anonymize_example(url, run_steps, margins, token)
    faces = record.get("faces") or []
    cosines = ", ".join(f"face {f['face']} m={f['margin']:g}: {f['identity_cosine']:.3f}" for f in faces)
    steps_text = f"{run_steps} step{'' if run_steps == 1 else 's'}" if run_steps else "the default steps"
    done("anonymize", start, f"the example, {steps_text}, m = {margins}: "
                             f"{len(faces)} result(s), identity cosine {cosines}")
    return stages


def anonymize_example(url: str, steps: int, margins: str, token: str | None) -> dict:
    """The example photo through the API, as README "Use the app" calls it; the run's record."""
    from gradio_client import Client, handle_file

    optim = OptimConfig()
    try:
        client = Client(url, token=token, verbose=False, download_files=False)
        _photo, _faces, record, _files = client.predict(
            handle_file(str(EXAMPLE_PHOTO)), "all", margins, steps, optim.lr, optim.lambda_id, optim.lambda_attr,
            0, False, api_name=API_NAME)
    except Exception as err:   # the client's errors have no common base: AppError, httpx's, ValueError
        raise SpaceError(f"Anonymizing the example failed: {first_line(err)}") from err
    if not isinstance(record, dict) or not record.get("faces"):
        raise SpaceError("Anonymizing the example returned no face.")
    return record
