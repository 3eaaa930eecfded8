"""A prepared set's fake bank grown beyond its first rows, in resumable parts beside the set.

A set prepared on a CPU holds the first ``BankConfig.cpu_size`` rows of the paper's bank.  The
next rows, drawn with the same seeds in the same order (falco.bank: row i depends on the networks,
the seed, psi and i only), are exactly the rows a full build makes; they go to
``<set>.bank-growth/`` as part files named by their first row.  The last part is rewritten as it
grows (every few fakes) until it holds ``BankConfig.growth_part_rows`` rows, when the next one
starts, so an interruption loses a few fakes and 60,000 fakes make some 60 files.  The set itself, whose
manifest hashes its bank, is never changed.  The folder records the sha256 of the set's bank and
networks that its rows continue; rows grown from another set are deleted, never mixed in.

Visitors' runs come first: each holds the ``RunGate`` while it runs, and growing stops at the
next layer of its networks once one does (a fraction of a second), then waits until no run is
going.  falco.ui.grower runs this in the app; ``python -m falco.weights prepare --grow-to N`` in
the foreground.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from falco.bank import FakeBank, contiguous_parts, joined, part_name, row_seeds, sample_rows
from falco.config import BANK_GROW_TO_ENV, BankConfig
from falco.device import render_batch as device_render_batch
from falco.output_files import save_json
from falco.weights.manifest import ARTIFACTS, MANIFEST_NAME, Manifest

log = logging.getLogger(__name__)

GROWTH_SUFFIX = ".bank-growth"
GROWN_FROM = "grown-from.json"
LINEAGE = ("fake_bank", "generator", "farl")   # what the grown rows continue: the set's bank and its networks


class GrowthPaused(Exception):
    """Raised inside the growing thread's networks when a run starts (or growing is asked to stop)."""


class RunGate:
    """Whether a visitor's run is going.  Runs hold it (``hold``); background work waits until none does
    (``wait_idle``) and does what must not happen under a run only while none can start (``if_idle``)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._runs = 0
        self._idle = threading.Event()
        self._idle.set()

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            self._runs += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if not self._runs:
                    self._idle.set()

    @property
    def busy(self) -> bool:
        return self._runs > 0

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout)

    def if_idle(self, work: Callable[[], object]) -> bool:
        """``work()`` unless a run is going, and no run starts until it is done; whether it ran."""
        with self._lock:
            if self._runs:
                return False
            work()
            return True


def growth_folder(set_folder: str | Path) -> Path:
    set_folder = Path(set_folder)
    return set_folder.with_name(set_folder.name + GROWTH_SUFFIX)


def grow_target(environ=os.environ) -> int:
    """The size the app grows its bank to: ``$FALCO_BANK_GROW_TO`` (0: no growth), else the paper's bank."""
    value = environ.get(BANK_GROW_TO_ENV, "").strip()
    if not value:
        return BankConfig().size
    try:
        return max(int(value), 0)
    except ValueError:
        log.warning("%s=%r is not a number of fakes; growing to %d", BANK_GROW_TO_ENV, value, BankConfig().size)
        return BankConfig().size


def grown_bank(set_folder: str | Path, base: FakeBank | None = None) -> FakeBank:
    """The set's bank (``base``: already loaded) followed by the rows grown beside it that continue it."""
    set_folder = Path(set_folder)
    base = base if base is not None else FakeBank.load(set_folder / ARTIFACTS["fake_bank"])
    folder = growth_folder(set_folder)
    if not _continues(folder, _lineage(set_folder)):
        return base
    parts = contiguous_parts(folder, len(base))
    return joined([base, *parts], base.config) if parts else base


def grow_bank(set_folder: str | Path, n: int, generator, mean_w: torch.Tensor, farl,
              config: BankConfig = BankConfig(), gate: RunGate | None = None, stop: threading.Event | None = None,
              on_saved: Callable[[FakeBank], None] | None = None, on_pause: Callable[[], None] | None = None,
              base: FakeBank | None = None) -> FakeBank:
    """Grow the set's bank to ``n`` rows beside it (resuming from the parts there) with its own networks; the bank
    it holds when ``n`` is reached or ``stop`` is set.  ``on_saved(bank)`` after each part is written (and once at
    the start with rows grown earlier); with a ``gate``, growing waits while a run holds it and stops at the next
    layer when one starts (``on_pause()`` then), the rows in the making thrown away."""
    set_folder = Path(set_folder)
    base = base if base is not None else FakeBank.load(set_folder / ARTIFACTS["fake_bank"])
    folder, lineage = growth_folder(set_folder), _lineage(set_folder)
    if not _continues(folder, lineage):
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    save_json(folder / GROWN_FROM, lineage)
    parts = contiguous_parts(folder, len(base))
    # The last part goes on growing while it is short of growth_part_rows; the others are complete.
    tail = [parts.pop()] if parts and len(parts[-1]) < config.growth_part_rows else []
    settled = joined([base, *parts], base.config) if parts else base
    count = len(settled) + sum(len(t) for t in tail)
    if on_saved and count > len(base):
        on_saved(joined([settled, *tail], base.config))
    stop = stop or threading.Event()
    device = mean_w.device
    step = config.render_batch or device_render_batch(device)
    save_every = config.cpu_chunk_rows if device.type == "cpu" else config.chunk_rows
    psi, seed = base.config["truncation_psi"], base.config["seed"]
    unsaved = 0
    pausing = _pausing(gate, stop, generator, farl) if gate is not None else nullcontext()
    with pausing:
        while count < n and not stop.is_set():
            if gate is not None and gate.busy:
                if on_pause:
                    on_pause()
                while not gate.wait_idle(0.5) and not stop.is_set():
                    pass
                continue
            seeds = row_seeds(seed, count, min(count + step, n))
            try:
                w, emb = sample_rows(generator, mean_w, farl, seeds, psi, step)
            except GrowthPaused:   # a run started (the loop's top waits for it), or stop
                continue
            tail.append(FakeBank(w.cpu(), emb.cpu(), seeds, base.config))
            count += len(seeds)
            unsaved += len(seeds)
            if unsaved >= save_every or count >= n:
                settled, tail = _save_tail(folder, settled, tail, config)
                unsaved = 0
                if on_saved:
                    on_saved(joined([settled, *tail], base.config))
    if unsaved:
        settled, tail = _save_tail(folder, settled, tail, config)
        if on_saved:
            on_saved(joined([settled, *tail], base.config))
    return joined([settled, *tail], base.config) if tail else settled


def _save_tail(folder: Path, settled: FakeBank, tail: list[FakeBank],
               config: BankConfig) -> tuple[FakeBank, list[FakeBank]]:
    """The rows after ``settled`` written as one part (replacing the shorter one of the same first row); once it
    holds growth_part_rows rows or more it is settled and the next rows start a new part."""
    part = joined(tail, settled.config)
    part.save(folder / part_name(len(settled)))
    if len(part) >= config.growth_part_rows:
        return joined([settled, part], settled.config), []
    return settled, [part]


@contextmanager
def _pausing(gate: RunGate, stop: threading.Event, *networks) -> Iterator[None]:
    """Every layer of ``networks`` raises GrowthPaused in this thread once a run holds ``gate`` or ``stop`` is set;
    in other threads (a visitor's run on the same networks) it does nothing."""
    me = threading.get_ident()

    def check(module, args) -> None:
        if (gate.busy or stop.is_set()) and threading.get_ident() == me:
            raise GrowthPaused

    handles = [module.register_forward_pre_hook(check) for network in networks for module in network.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _lineage(set_folder: Path) -> dict[str, str | None]:
    manifest = Manifest.load(set_folder / MANIFEST_NAME)
    return {name: manifest.artifact(name, str(set_folder)).sha256 for name in LINEAGE}


def _continues(folder: Path, lineage: dict) -> bool:
    try:
        return json.loads((folder / GROWN_FROM).read_text()) == lineage
    except (OSError, ValueError):
        return False
