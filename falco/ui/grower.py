"""The prepared set's fake bank, grown in a background thread while no visitor's run is going.

Once the networks are loaded, ``BankGrower`` makes the next rows of the set's bank
(falco.weights.growth: the rows a full build makes, in resumable parts beside the set, on
persistent storage when the set is there) up to ``grow_target()``.  Every run holds the engine's
RunGate (``EngineLoader.running``); growing stops at the next layer when one starts and waits
until none is going.  Each saved stretch of rows is handed to the engine as a new bank, swapped
in only while no run goes: a run pairs against the rows ready when it started, and a bank a run
holds is never changed.  On ZeroGPU, whose GPU is lent to runs only, the rows are made on the CPU
with copies of the generator and FaRL; elsewhere with the engine's own networks.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch

from falco.bank import FakeBank
from falco.errors import FalcoError
from falco.ui.engine import EngineLoader
from falco.weights.growth import grow_bank
from falco.weights.manifest import ARTIFACTS

log = logging.getLogger(__name__)


class BankGrower:
    """Grows the bank of the set in ``set_folder`` (None: the folder the engine was loaded from) to ``target`` rows
    on ``device`` while ``loader``'s runs let it."""

    def __init__(self, loader: EngineLoader, set_folder: str | Path | None, target: int, device: torch.device):
        self.loader, self.target, self.device = loader, target, device
        self.set_folder = Path(set_folder) if set_folder is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.paused = threading.Event()   # set each time growing gives way to a run (tests, the log)
        self.done = threading.Event()     # set when the thread ends, whatever the reason

    def start(self) -> BankGrower:
        self._thread = threading.Thread(target=self._run, name="falco-bank-grower", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop growing (the rows made so far are saved) and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            engine = self.loader.get()   # waits for the load under way; a failed one is the engine's to report
        except FalcoError:
            self.done.set()
            return
        try:
            self.set_folder = self.set_folder or Path(engine.source)
            if len(engine.bank) >= self.target:
                return
            generator, mean_w, farl = self._networks(engine)
            log.info("growing the fake bank from %d to %d fakes on %s while no run is going (%s)",
                     len(engine.bank), self.target, self.device, self.set_folder.name)
            started, first = time.monotonic(), len(engine.bank)
            bank = grow_bank(self.set_folder, self.target, generator, mean_w, farl, gate=self.loader.runs,
                             stop=self._stop, on_saved=lambda grown: self._hand_over(engine, grown),
                             on_pause=self.paused.set, base=engine.bank)
            # The last stretch may have been saved while a run went: it goes in once none does.
            while len(engine.bank) < len(bank) and not self._stop.is_set():
                if self.loader.runs.wait_idle(0.5):
                    self._hand_over(engine, bank)
            log.info("the fake bank holds %d fakes (%d made in %.1f min)", len(bank), len(bank) - first,
                     (time.monotonic() - started) / 60)
        except Exception:   # the app goes on with the bank it has
            log.exception("growing the fake bank failed; the app goes on with %d fakes", len(engine.bank))
        finally:
            self.done.set()

    def _networks(self, engine) -> tuple:
        if engine.device == self.device:
            return engine.nets.generator, engine.nets.mean_w, engine.nets.farl
        from falco.models import io
        generator, mean_w = io.load_generator(self.set_folder / ARTIFACTS["generator"], self.device)
        return generator, mean_w, io.load_farl(self.set_folder / ARTIFACTS["farl"], self.device)

    def _hand_over(self, engine, bank: FakeBank) -> None:
        def swap() -> None:
            engine.bank = bank
        self.loader.runs.if_idle(swap)
