"""What Gradio's queue holds, read for the page: a visitor's place in line and the calls that use a file.

Gradio has no public API for either, so every read of its queue's internals is here, in one place to
mend when Gradio changes them (tests/test_app.py drives each through a real queue).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import gradio as gr


def _events(demo: gr.Blocks) -> list:
    """Every event from joining the queue until it is done (waiting or running)."""
    return list(demo._queue.event_ids_to_events.values())


def has_events(demo: gr.Blocks, session_hash: str, handlers: Collection[Callable]) -> bool:
    """Whether the session has a call of one of ``handlers`` waiting or running."""
    return any(event.session_hash == session_hash and event.fn.fn in handlers for event in _events(demo))


def api_calls_with(demo: gr.Blocks, api_name: str, path: str) -> int:
    """Calls of the endpoint ``api_name`` waiting or running whose first input is the file record of ``path``."""
    return sum(1 for event in _events(demo) if event.fn.api_name == api_name and event.data is not None
               and event.data.data and isinstance(event.data.data[0], dict)
               and event.data.data[0].get("path") == path)


@dataclass(frozen=True)
class Place:
    ahead: int                 # calls before this one in line
    running: int               # calls being served now
    wait_s: float | None       # expected wait until this call starts; None until each kind has run once

    def describe(self) -> str:
        line = (f"Waiting in line: {self.ahead} run{'s' if self.ahead != 1 else ''} ahead of yours" if self.ahead
                else "Waiting in line: yours is next")
        if self.running:
            now = "the one running now" if self.running == 1 else f"the {self.running} running now"
            line += f", and {now}" if self.ahead else f", after {now}"
        if self.wait_s is None:
            return line + ". The expected wait shows once a first run has finished."
        return f"{line}. Expected wait: about {_duration(self.wait_s)}."


def place_in_line(demo: gr.Blocks, session_hash: str, handlers: Collection[Callable], concurrency_id: str,
                  running_left_s: float | None = None) -> Place | None:
    """The session's place in the line of ``concurrency_id`` for a call of one of ``handlers``; None when it has
    none waiting (not queued yet, running or done).  The wait is Gradio's own estimate, from the mean duration of
    each kind of call so far, as it computes its "queue: 2/5 | 30 s" corner; ``running_left_s``, when the caller
    knows better how long the call running now has left (from its steps, see RunClock), stands in for that part."""
    queue = demo._queue
    line = queue.event_queue_per_concurrency_id.get(concurrency_id)
    if line is None:
        return None
    waiting = list(line.queue)
    rank = next((i for i, event in enumerate(waiting)
                 if event.session_hash == session_hash and event.fn.fn in handlers), None)
    if rank is None:
        return None
    durations = queue.process_time_per_fn
    lanes = line.concurrency_limit or 1
    busy = line.current_concurrency >= lanes
    if not busy:
        free_in = 0.0
    elif running_left_s is not None and lanes == 1:
        free_in = max(running_left_s, 0.0)
    elif all(fn in durations for fn in line.start_times_per_fn):
        ends = [start + durations[fn].avg_time for fn, starts in line.start_times_per_fn.items() for start in starts]
        free_in = max(min(ends) - time.time(), 0.0) if ends else 0.0
    else:
        free_in = None
    wait_s = None
    if free_in is not None and all(event.fn in durations for event in waiting[:rank]):
        wait_s = free_in + sum(durations[event.fn].avg_time for event in waiting[:rank]) / lanes
    return Place(rank, line.current_concurrency, wait_s)


@dataclass
class RunClock:
    """How long the photo run under way has left, from its own steps: Gradio's estimate is the mean of all runs so
    far, which a 200-step run after 1-step runs makes wrong by minutes.  One per app: one run at a time holds the
    GPU line."""
    started: float | None = None      # time.monotonic() of the run's first step
    step: int = 0
    total: int = 0
    stamp: float = 0.0                # time.monotonic() of ``step``

    def start(self) -> None:
        self.started, self.step, self.total = None, 0, 0

    def tick(self, step: int, total: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.started is None:
            self.started = now
        self.step, self.total, self.stamp = step, total, now

    def stop(self) -> None:
        self.started, self.step, self.total = None, 0, 0

    def left_s(self, now: float | None = None) -> float | None:
        """Seconds until the last step, at the pace of the steps since the first (None before two steps)."""
        if self.started is None or self.step < 2:
            return None
        now = time.monotonic() if now is None else now
        per_step = (self.stamp - self.started) / (self.step - 1)
        return max(per_step * (self.total - self.step) - (now - self.stamp), 0.0)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
