"""falco.ui.queue_state reads Gradio's queue internals: driven here through a real queue, so a Gradio that changes
them fails these tests rather than the page."""

import threading
import time

import gradio as gr
import pytest
from gradio_client import Client

from falco.ui.queue_state import Place, RunClock, api_calls_with, has_events, place_in_line

GATE = threading.Event()


def held(text: str) -> str:
    GATE.wait(60)
    return text


def other(text: str) -> str:
    return text


@pytest.fixture(scope="module")
def line():
    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        gr.Button().click(held, box, out, api_name="held", concurrency_id="gpu")
        gr.Button().click(other, box, out, api_name="other", concurrency_id="gpu")
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    yield demo, url
    GATE.set()
    demo.close()


def until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the queue never got there"
        time.sleep(0.05)


def queued(demo) -> int:
    return len(demo._queue.event_ids_to_events)


@pytest.mark.slow
def test_places_in_line_and_the_calls_of_a_session(line):
    demo, url = line
    GATE.clear()
    clients = [Client(url, verbose=False) for _ in range(3)]
    jobs = []
    for n, client in enumerate(clients):   # one by one, so the line's order is known
        jobs.append(client.submit("a", api_name="/held"))
        until(lambda: queued(demo) == n + 1)
    first, second, third = (c.session_hash for c in clients)
    until(lambda: place_in_line(demo, first, {held}, "gpu") is None and place_in_line(demo, second, {held}, "gpu"))
    # No call has finished yet, so there is no expected wait.
    assert place_in_line(demo, second, {held}, "gpu") == Place(ahead=0, running=1, wait_s=None)
    assert place_in_line(demo, third, {held}, "gpu") == Place(ahead=1, running=1, wait_s=None)
    assert all(has_events(demo, s, {held}) for s in (first, second, third))
    assert not has_events(demo, second, {other}) and place_in_line(demo, second, {other}, "gpu") is None
    assert not has_events(demo, "nobody", {held}) and place_in_line(demo, third, {held}, "another line") is None
    assert api_calls_with(demo, "held", "/no/such/file") == 0
    GATE.set()
    assert [job.result(timeout=60) for job in jobs] == ["a"] * 3
    until(lambda: queued(demo) == 0)
    assert not has_events(demo, first, {held})

    # Once a call of each kind ahead has finished, Gradio's mean durations give an expected wait.
    GATE.clear()
    jobs = []
    for n, client in enumerate(clients):
        jobs.append(client.submit("b", api_name="/held"))
        until(lambda: queued(demo) == n + 1)
    until(lambda: place_in_line(demo, first, {held}, "gpu") is None)
    place = place_in_line(demo, third, {held}, "gpu")
    assert place.ahead == 1 and place.running == 1 and place.wait_s is not None and place.wait_s >= 0
    # What the running call has left, when the app knows it from its steps, replaces Gradio's mean for that part.
    assert place_in_line(demo, second, {held}, "gpu", running_left_s=100.0) == Place(0, 1, 100.0)
    mean = demo._queue.process_time_per_fn[demo.fns[0]].avg_time   # of the one call ahead of the third
    assert place_in_line(demo, third, {held}, "gpu", running_left_s=100.0).wait_s == pytest.approx(100.0 + mean)
    GATE.set()
    assert [job.result(timeout=60) for job in jobs] == ["b"] * 3


@pytest.mark.parametrize("place, text", [
    (Place(0, 1, None), "Waiting in line: yours is next, after the one running now. "
                        "The expected wait shows once a first run has finished."),
    (Place(2, 1, 75.4), "Waiting in line: 2 runs ahead of yours, and the one running now. "
                        "Expected wait: about 1 min 15 s."),
    (Place(1, 0, 0.2), "Waiting in line: 1 run ahead of yours. Expected wait: about 1 s."),
    (Place(3, 2, 4000), "Waiting in line: 3 runs ahead of yours, and the 2 running now. "
                        "Expected wait: about 1 h 06 min."),
])
def test_a_place_in_words(place, text):
    assert place.describe() == text


def test_the_run_clock_paces_the_steps_left():
    clock = RunClock()
    clock.start()
    assert clock.left_s(now=0.0) is None                 # no step yet
    clock.tick(1, 11, now=10.0)                          # the first step comes after the set-up: not a pace
    assert clock.left_s(now=10.0) is None
    clock.tick(3, 11, now=14.0)                          # 2 s a step since the first
    assert clock.left_s(now=14.0) == 16.0                # 8 steps left
    assert clock.left_s(now=20.0) == 10.0                # 6 s into step 4
    assert clock.left_s(now=60.0) == 0.0                 # late: never negative
    clock.stop()
    assert clock.left_s(now=14.0) is None                # no run: Gradio's estimate
