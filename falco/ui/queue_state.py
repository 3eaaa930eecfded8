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


def place_in_line(demo: gr.Blocks, session_hash: str, handlers: Collection[Callable],
                  concurrency_id: str) -> Place | None:
    """The session's place in the line of ``concurrency_id`` for a call of one of ``handlers``; None when it has
    none waiting (not queued yet, running or done).  The wait is Gradio's own estimate, from the mean duration of
    each kind of call so far, as it computes its "queue: 2/5 | 30 s" corner."""
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
    known = all(fn in durations for fn in line.start_times_per_fn) and all(
        event.fn in durations for event in waiting[:rank])
    wait_s = None
    if known:
        now = time.time()
        ends = [start + durations[fn].avg_time for fn, starts in line.start_times_per_fn.items() for start in starts]
        free_in = max(min(ends) - now, 0.0) if ends and line.current_concurrency >= (line.concurrency_limit or 1) \
            else 0.0
        wait_s = free_in + sum(durations[event.fn].avg_time for event in waiting[:rank]) / (line.concurrency_limit or 1)
    return Place(rank, line.current_concurrency, wait_s)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
