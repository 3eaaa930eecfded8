"""Starting the app process: the device, the weights fetched while Gradio imports, the page, then the networks.

Order matters, for the start-up time and for CPU speed:

1. glibc's allocator is told to reuse freed memory before the loader and Gradio start their
   threads (``falco.allocator``: the CPU steps are ~2x faster in a thread that starts after it);
2. the weights are fetched and their sha256 checked in the background while Gradio is
   imported (seconds of import; hashing and I/O leave the GIL free);
3. the networks are built once the page is served (building is Python work: run against
   Gradio's import, both took longer), and the page says when they are ready;
4. a set prepared here then has its fake bank grown while no run goes (falco.ui.grower).

On a Space with persistent storage, the cache and the prepared set are kept there
(falco.weights.storage; app.py decides it before huggingface_hub is imported).

Weights that a retry cannot fix stop the process (``load_failure_is_final``); the Hub or the
network failing keeps the page up, and the next run tries again.  This module sits above the
engine loader and the page; it imports the page (and so Gradio) only once the fetch is under way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from falco.allocator import reuse_freed_memory
from falco.config import AppConfig
from falco.device import zerogpu_available
from falco.errors import FalcoError
from falco.ui.engine import (
    EngineLoader,
    LoadProgress,
    decide_device,
    in_background,
    load_failure_is_final,
    weights_loader,
)
from falco.weights import WeightPaths, fetch_weights, parse_source
from falco.weights.growth import grow_target
from falco.weights.hub import is_published
from falco.weights.prepare import FIRST_START, PrepareProgress, prepare_weights
from falco.weights.storage import RESTART_NOTE, keep_on_persistent_storage, restart_prepares_again

if TYPE_CHECKING:
    import gradio as gr

    from falco.ui.handlers import PageHandlers

log = logging.getLogger(__name__)


def weights_fetcher(weights: str | None, device: torch.device,
                    report: Callable[[str | None], None]) -> Callable[[], WeightPaths]:
    """What fetches the weights: those named (a folder, a Hub repo), or on a first start with nothing published
    (the default repo, which weights/manifest.json pins to no commit) the set prepared from the official
    checkpoints, kept in the local cache: built once (``report`` follows it), then used without the network.  On a
    Space without persistent storage the banner adds that a restart prepares them again."""
    if is_published(weights):
        return lambda: fetch_weights(weights)
    note = f". {RESTART_NOTE}" if restart_prepares_again() else ""

    def prepared() -> WeightPaths:
        def follow(step: PrepareProgress) -> None:
            report(step.describe() + note)
        try:
            # ZeroGPU lends a GPU to each run only, so there the bank is built on the CPU (its smaller size).
            folder = prepare_weights(device=torch.device("cpu") if zerogpu_available() else device, progress=follow,
                                     built_by=FIRST_START)
        finally:
            report(None)
        return fetch_weights(str(folder))
    return prepared


def start_app(weights: str | None = None, device: str | None = None, config: AppConfig = AppConfig(),
              host: str | None = None, port: int | None = None,
              **launch_kwargs: Any) -> tuple[gr.Blocks, PageHandlers]:
    """What ``python app.py`` does: choose the device, fetch the weights while Gradio imports, serve the page,
    build the networks.

    A bad device or weights argument, or weights that a retry cannot fix (``load_failure_is_final``), raise
    their FalcoError: before the page is served where known by then, else once the first load fails (the page
    closes).  The Hub or the network failing keeps the page up; the next run tries again.
    ``launch_kwargs`` go to ``gr.Blocks.launch``; with ``prevent_thread_lock=True`` this returns once the page
    serves and the networks load in the background, a final failure then being logged (and raised by
    ``app.loader.get()``).
    """
    # This module's imports brought in the pipeline's (open_clip, dlib) in the main thread, so that the fetching
    # thread and Gradio's import below never import the same modules at once.
    keep_on_persistent_storage()   # app.py did so already, before huggingface_hub was imported
    device = decide_device(device)
    parse_source(weights)   # a folder that does not exist, or a malformed repo id, stops here
    if device.type == "cpu":
        reuse_freed_memory()
    # Fetching and hashing is I/O that leaves the GIL free; building the networks is Python work that
    # would contend with Gradio's import for it, so that waits for the page.
    progress = LoadProgress()
    fetch = weights_fetcher(weights, device, progress.report)
    fetched = in_background(fetch, name="falco-fetch")
    loader = weights_loader(fetch, device, fetched, final=load_failure_is_final, progress=progress)
    log.info("fetching and checking the weights in the background; building the page")
    from falco.ui.page import build_app, launch_app
    demo, app = build_app(device=device, config=config, loader=loader, load_now=False)
    if fetched.done() and fetched.exception() is not None and load_failure_is_final(fetched.exception()):
        raise fetched.exception()
    block = not launch_kwargs.pop("prevent_thread_lock", False)
    launch_app(demo, config, host=host, port=port, prevent_thread_lock=True, **launch_kwargs)
    log.info("serving the page; the networks load on %s", device)
    if not block:
        loader.start()
        _grow_prepared_bank(weights, device, loader)
        return demo, app
    try:
        loader.get()
        log.info("the networks are loaded")
    except FalcoError:
        if loader.final_failure is not None:
            demo.close()
            raise loader.final_failure from None
    _grow_prepared_bank(weights, device, loader)
    demo.block_thread()
    return demo, app


def _grow_prepared_bank(weights: str | None, device: torch.device, loader: EngineLoader) -> None:
    """A set prepared here holds the first rows of the paper's bank: the next ones are made while the server is idle
    (falco.ui.grower).  Published sets hold it all already."""
    target = grow_target()
    if is_published(weights) or not target:
        return
    from falco.ui.grower import BankGrower
    # ZeroGPU lends a GPU to runs only: the rows are made on the CPU, as the set's first ones were.
    grows_on = torch.device("cpu") if zerogpu_available() else device
    loader.grower = BankGrower(loader, None, target, grows_on).start()   # the folder the set is loaded from
