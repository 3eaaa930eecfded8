"""The engine behind the page: on which device, the pipeline built once per process, and what its failures mean.

The device is decided (``decide_device``) and the loader made (``weights_loader``) here only, for
``start_app`` and ``build_app`` alike (falco.ui.startup, falco.ui.page).  ``EngineLoader.get()`` builds
the pipeline (or waits for the build under way); ``start()`` builds it in a background thread so the
page is served at once.  Weights that a retry cannot fix make a final failure (``load_failure_is_final``);
the Hub or the network failing is retried by the next run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from falco.device import app_device, zerogpu_available
from falco.errors import FalcoError, HubUnavailableError
from falco.pipeline import FalcoPipeline
from falco.ui.messages import LOAD_FAILED_MESSAGE, describe_error
from falco.weights import WeightPaths
from falco.weights.growth import RunGate

log = logging.getLogger(__name__)


class LoadProgress:
    """What the load is doing now, in one line for the page (a first start prepares the weights for minutes)."""

    def __init__(self):
        self.line: str | None = None

    def report(self, line: str | None) -> None:
        self.line = line   # one reference swapped: readers in other threads see the old line or the new


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
                 final: Callable[[BaseException], bool] = lambda err: False, progress: LoadProgress | None = None):
        self._factory, self._final = factory, final
        self._lock = threading.Lock()
        self._engine: FalcoPipeline | None = None
        self._failed = False
        self.final_failure: BaseException | None = None
        self._start_lock = threading.Lock()   # not self._lock: get() holds that for the whole load
        self._started = False
        self.progress = progress or LoadProgress()
        # Held by every visitor's run while it goes: the bank grows in the background only while none does.
        self.runs = RunGate()
        self.grower: Any = None   # the falco.ui.grower.BankGrower growing the engine's bank, where one does

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

    def running(self):
        """Held around a visitor's run (a context manager): background work waits while one goes."""
        return self.runs.hold()

    def _bank_line(self) -> str:
        bank = getattr(self._engine, "bank", None)
        if bank is None:
            return ""
        line = f" The fake bank holds {len(bank):,} fakes"
        grower = self.grower
        if grower is not None and not grower.done.is_set() and len(bank) < grower.target:
            line += f"; more are made while no run is going, up to {grower.target:,}"
        return line + "."

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
            return "ready", f"The networks are loaded.{self._bank_line()}"
        if self._failed:
            return "failed", LOAD_FAILED_MESSAGE
        return "loading", self.progress.line or "Loading the networks; the first run starts when they are ready."


def load_failure_is_final(err: BaseException) -> bool:
    """A FalcoError of the weights that loading again cannot fix: a folder or file missing or corrupt, a bad
    repo id, a repo, revision or file the Hub does not have, a checksum mismatch, a full disk.  The Hub or
    the network failing for now (HubUnavailableError, sorted where the download fails) is not final, nor an
    unexpected error (a bug, logged in full)."""
    return isinstance(err, FalcoError) and not isinstance(err, HubUnavailableError)


def decide_device(device: str | torch.device | None) -> torch.device:
    """The device the app runs on: one already decided stays as it is; a name ("cuda", "cpu", ...) or None (CUDA
    where there is one, and on ZeroGPU, whose GPU each run is lent) is decided here, once per process."""
    if isinstance(device, torch.device):
        return device
    return app_device(device, zerogpu=zerogpu_available())


def weights_loader(fetch: Callable[[], WeightPaths], device: torch.device, fetched: Future[WeightPaths] | None = None,
                   final: Callable[[BaseException], bool] = lambda err: False,
                   progress: LoadProgress | None = None) -> EngineLoader:
    """The app's loader: ``fetch()`` gives the checked weight files, then the networks are built on ``device``.
    The first load takes the files of ``fetched`` (a fetch started earlier) where given; a later one fetches
    anew.  ``final`` and ``progress`` are EngineLoader's."""
    earlier = [fetched] if fetched is not None else []

    def load() -> FalcoPipeline:
        paths = earlier.pop().result() if earlier else fetch()
        return FalcoPipeline.from_pretrained(paths, device=device)
    return EngineLoader(load, final=final, progress=progress)


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
