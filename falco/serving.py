"""Starting the app process: the device, the pipeline loaded once in the background, then the page.

Order matters, for the start-up time and for CPU speed:

1. glibc's allocator is told to reuse freed memory before the loader and Gradio start their
   threads (``falco.speed``: the CPU steps are ~2x faster in a thread that starts after it);
2. the weights are fetched and their sha256 checked in the background while Gradio is
   imported (seconds of import; hashing and I/O leave the GIL free);
3. the networks are built once the page is served (building is Python work: run against
   Gradio's import, both took longer), and the page says when they are ready.

Weights that a retry cannot fix stop the process (``load_failure_is_final``); the Hub or the
network failing keeps the page up, and the next run tries again.  Nothing here imports Gradio,
so ``python app.py`` can start the fetch first.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import torch

from falco.config import AppConfig
from falco.errors import FalcoError, HubUnavailableError
from falco.speed import reuse_freed_memory

if TYPE_CHECKING:
    import gradio as gr

    from falco.pipeline import FalcoPipeline
    from falco.ui import FalcoApp
    from falco.weights import WeightPaths

log = logging.getLogger(__name__)

OOM_MESSAGE = ("The GPU ran out of memory. Try fewer faces, fewer m values, or fewer steps, "
               "or try again when the Space is less busy.")
ZEROGPU_ENV = "SPACES_ZERO_GPU"
UNEXPECTED_MESSAGE = "Something went wrong on the server (it has been logged). Please try again."
LOAD_FAILED_MESSAGE = "The models could not be loaded; the server log says why."


def describe_error(err: BaseException) -> str:
    """The one line a visitor sees for ``err``; anything unexpected is logged in full."""
    if isinstance(err, FalcoError):
        return str(err)
    if isinstance(err, torch.cuda.OutOfMemoryError):
        log.warning("out of GPU memory (%s)", str(err).split("\n", 1)[0])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return OOM_MESSAGE
    log.error("unexpected error in the app", exc_info=err)
    return UNEXPECTED_MESSAGE


class EngineLoader:
    """Builds the pipeline once per process.

    ``get()`` loads it (or waits for the load in progress); ``start()`` loads in a background thread so
    the page comes up at once.  A failed load is logged with its reason and raised as LOAD_FAILED_MESSAGE
    (what visitors see: the reason may name server paths).  The next ``get()`` tries again, so the app
    recovers without a restart once the Hub is back, say; unless ``final(err)`` says a retry cannot help:
    then every later ``get()`` raises at once, and the error is ``final_failure``, left for the caller to
    report (``start_app`` stops the process with it; ``start()``'s thread logs it).
    """

    def __init__(self, factory: Callable[[], FalcoPipeline],
                 final: Callable[[BaseException], bool] = lambda err: False):
        self._factory, self._final = factory, final
        self._lock = threading.Lock()
        self._engine: FalcoPipeline | None = None
        self._failed = False
        self.final_failure: BaseException | None = None
        self._start_lock = threading.Lock()   # not self._lock: get() holds that for the whole load
        self._started = False

    def start(self) -> None:
        """Load in a background thread; calling it again does nothing."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load_quietly, name="falco-load", daemon=True).start()

    def get(self) -> FalcoPipeline:
        with self._lock:
            if self._engine is None:
                if self.final_failure is not None:
                    raise FalcoError(LOAD_FAILED_MESSAGE) from self.final_failure
                try:
                    self._engine = self._factory()
                    self._failed = False
                except Exception as err:
                    self._failed = True
                    if self._final(err):
                        self.final_failure = err
                    elif isinstance(err, FalcoError):
                        log.warning("loading the networks failed; the next run tries again: %s", err)
                    else:
                        describe_error(err)   # logs it with its traceback
                    raise FalcoError(LOAD_FAILED_MESSAGE) from err
            return self._engine

    def _load_quietly(self) -> None:
        try:
            self.get()
            log.info("the networks are loaded")
        except FalcoError:
            if self.final_failure is not None:
                log.error("the networks cannot be loaded; fix this and restart: %s", self.final_failure)

    def status(self) -> tuple[str, str]:
        """(state, one line for the page); state is "ready", "loading" or "failed"."""
        if self._engine is not None:
            return "ready", "The networks are loaded."
        if self._failed:
            return "failed", LOAD_FAILED_MESSAGE
        return "loading", "Loading the networks; the first run starts when they are ready."


def load_failure_is_final(err: BaseException) -> bool:
    """A FalcoError of the weights that loading again cannot fix: a folder or file missing or corrupt, a bad
    repo id, a repo, revision or file the Hub does not have, a checksum mismatch, a full disk.  The Hub or
    the network failing for now (HubUnavailableError, sorted where the download fails) is not final, nor an
    unexpected error (a bug, logged in full)."""
    return isinstance(err, FalcoError) and not isinstance(err, HubUnavailableError)


def pipeline_factory(source: str | None, device: str | None,
                     fetched: Future[WeightPaths] | None = None) -> Callable[[], FalcoPipeline]:
    """Loads the pipeline: the weight files are fetched and checked, then the networks are built.  The first
    load takes the files of ``fetched`` (a fetch started earlier) where given; a later one fetches anew."""
    earlier = [fetched] if fetched is not None else []

    def load() -> FalcoPipeline:
        from falco.pipeline import FalcoPipeline
        from falco.weights import fetch_weights
        paths = earlier.pop().result() if earlier else fetch_weights(source)
        return FalcoPipeline.from_pretrained(paths, device=device)
    return load


def in_background(work: Callable[[], Any], name: str) -> Future:
    """``work()`` in a daemon thread (a process that stops does not wait for it), as a Future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as err:
            future.set_exception(err)
    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def zerogpu_available() -> bool:
    """On a ZeroGPU Space each run gets a GPU for a while.  Spaces of every kind may have the ``spaces``
    package; ZeroGPU ones also set SPACES_ZERO_GPU (the package reads the same variable)."""
    if os.environ.get(ZEROGPU_ENV, "").strip().lower() not in ("1", "true", "yes"):
        return False
    try:
        import spaces  # noqa: F401
    except ImportError:
        return False
    return True


def app_device(device: str | None, zerogpu: bool) -> str:
    """The device runs use: the one asked for, else CUDA on ZeroGPU (whose GPU each run is lent, so none
    is visible yet), else the pipeline's default.  An unknown name, or off ZeroGPU a GPU this machine does
    not have, is a FalcoError of one line."""
    from falco.pipeline import resolve_device  # its imports (open_clip, dlib) are the loader's anyway
    return str(resolve_device(device or ("cuda" if zerogpu else None), present=not zerogpu))


def start_app(weights: str | None = None, device: str | None = None, config: AppConfig = AppConfig(),
              host: str | None = None, port: int | None = None,
              **launch_kwargs: Any) -> tuple[gr.Blocks, FalcoApp]:
    """What ``python app.py`` does: choose the device, fetch the weights while Gradio imports, serve the page,
    build the networks.

    A bad device or weights argument, or weights that a retry cannot fix (``load_failure_is_final``), raise
    their FalcoError: before the page is served where known by then, else once the first load fails (the page
    closes).  The Hub or the network failing keeps the page up; the next run tries again.
    ``launch_kwargs`` go to ``gr.Blocks.launch``; with ``prevent_thread_lock=True`` this returns once the page
    serves and the networks load in the background, a final failure then being logged (and raised by
    ``app.loader.get()``).
    """
    from falco.weights import fetch_weights, parse_source

    # app_device imports the pipeline's modules (open_clip, dlib; no thread starts) here in the main thread,
    # so that the fetching thread and Gradio's import below never import the same modules at once.
    device = app_device(device, zerogpu_available())
    parse_source(weights)   # a folder that does not exist, or a malformed repo id, stops here
    if torch.device(device).type == "cpu":
        reuse_freed_memory()
    # Fetching and hashing is I/O that leaves the GIL free; building the networks is Python work that
    # would contend with Gradio's import for it, so that waits for the page.
    fetched = in_background(lambda: fetch_weights(weights), name="falco-fetch")
    loader = EngineLoader(pipeline_factory(weights, device, fetched), final=load_failure_is_final)
    log.info("fetching and checking the weights in the background; building the page")
    from falco.ui import build_app, launch_app
    demo, app = build_app(device=device, config=config, loader=loader, load_now=False)
    if fetched.done() and fetched.exception() is not None and load_failure_is_final(fetched.exception()):
        raise fetched.exception()
    block = not launch_kwargs.pop("prevent_thread_lock", False)
    launch_app(demo, config, host=host, port=port, prevent_thread_lock=True, **launch_kwargs)
    log.info("serving the page; the networks load on %s", device)
    if not block:
        loader.start()
        return demo, app
    try:
        loader.get()
        log.info("the networks are loaded")
    except FalcoError:
        if loader.final_failure is not None:
            demo.close()
            raise loader.final_failure from None
    demo.block_thread()
    return demo, app
