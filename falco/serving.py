"""Starting the app process: the device, the pipeline loaded once in the background, then the page.

Order matters, for the start-up time and for CPU speed:

1. glibc's allocator is told to reuse freed memory before the loader and Gradio start their
   threads (``falco.speed``: the CPU steps are ~2x faster in a thread that starts after it);
2. the weights are fetched and their sha256 checked in the background while Gradio is
   imported (seconds of import; hashing and I/O leave the GIL free);
3. the networks are built once the page is (building is Python work: run against Gradio's
   import, both took longer), and the page says when they are ready.

Nothing here imports Gradio, so ``python app.py`` can start the loader first.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from falco.config import AppConfig
from falco.errors import FalcoError
from falco.speed import reuse_freed_memory

if TYPE_CHECKING:
    import gradio as gr

    from falco.pipeline import FalcoPipeline
    from falco.ui import FalcoApp

log = logging.getLogger(__name__)

OOM_MESSAGE = ("The GPU ran out of memory. Try fewer faces, fewer m values, or fewer steps, "
               "or try again when the Space is less busy.")
ZEROGPU_ENV = "SPACES_ZERO_GPU"
UNEXPECTED_MESSAGE = "Something went wrong on the server (it has been logged). Please try again."


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

    ``start()`` loads in a background thread so the page comes up at once; ``get()``
    waits for that load.  A failed load (the Hub unreachable, say) is retried by the next
    ``get()``, so the app recovers without a restart once the cause is fixed.
    """

    def __init__(self, factory: Callable[[], FalcoPipeline]):
        self._factory = factory
        self._lock = threading.Lock()
        self._engine: FalcoPipeline | None = None
        self._failure: str | None = None   # what the page says about the last failed load
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
                try:
                    self._engine = self._factory()
                    self._failure = None
                except Exception as err:
                    self._failure = describe_error(err)
                    raise
            return self._engine

    def _load_quietly(self) -> None:
        try:
            self.get()
            log.info("the networks are loaded")
        except Exception:
            log.warning("loading the networks failed: %s", self._failure)

    def status(self) -> tuple[str, str]:
        """(state, one line for the page); state is "ready", "loading" or "failed"."""
        if self._engine is not None:
            return "ready", "The networks are loaded."
        if self._failure is not None:
            return "failed", f"The networks could not be loaded: {self._failure}"
        return "loading", "Loading the networks; the first run starts when they are ready."


def pipeline_factory(source: str | None, device: str | None,
                     build_after: threading.Event | None = None) -> Callable[[], FalcoPipeline]:
    """Loads the pipeline: the weight files are fetched and checked, then (once ``build_after`` is set,
    where given) the networks are built."""
    def load() -> FalcoPipeline:
        from falco.pipeline import FalcoPipeline
        from falco.weights import fetch_weights
        paths = fetch_weights(source)   # downloads and sha256 checks: I/O and hashing, which leave the GIL free
        if build_after is not None:
            build_after.wait()          # building is Python work that would contend for the GIL with the page's
        return FalcoPipeline.from_pretrained(paths, device=device)
    return load


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
    """What ``python app.py`` does: choose the device, start loading, import and serve the page.

    ``launch_kwargs`` go to ``gr.Blocks.launch`` (``prevent_thread_lock=True`` returns at once).
    """
    # app_device imports the pipeline's modules (open_clip, dlib; no thread starts) here in the main thread,
    # so that the loading thread and Gradio's import below never import the same modules at once.
    device = app_device(device, zerogpu_available())
    if torch.device(device).type == "cpu":
        reuse_freed_memory()
    page_built = threading.Event()
    loader = EngineLoader(pipeline_factory(weights, device, build_after=page_built))
    loader.start()
    log.info("fetching and checking the weights in the background; starting the page")
    try:
        from falco.ui import build_app, launch_app
        demo, app = build_app(device=device, config=config, loader=loader, load_now=False)   # already loading
    finally:
        page_built.set()
    log.info("page built; building the networks on %s", device)
    launch_app(demo, config, host=host, port=port, **launch_kwargs)
    return demo, app
