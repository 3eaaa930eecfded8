"""From process start to a ready app: where the time goes, and the peak memory once every network is loaded.

    python -m falco.benchmarks.startup                       # makes a full-size random weight set first
    python -m falco.benchmarks.startup --weights DIR         # a folder in Hub layout (random or real)

A fresh Python process does what ``python app.py`` does (``falco.ui.startup.start_app``), on
the CPU: imports torch and the pipeline's modules, starts loading the networks in a
background thread, imports Gradio and builds the page meanwhile, starts serving, then waits
for the networks.  The pipeline's own loading functions are timed as
they run.  A random set gets a fake bank of full size (60,000 rows of noise) so that its
loading time and memory are those of the real one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from falco.benchmarks import resident_bytes

FULL_BANK_ROWS = 60_000
CHILD_FLAG = "--child"


# --- The measured process ------------------------------------------------------------------------
class Clock:
    """Wall-clock marks (seconds since the epoch, comparable with the parent's) and timed calls."""

    def __init__(self):
        self.marks: list[tuple[str, float]] = []
        self.spans: list[tuple[str, float, float]] = []

    def mark(self, name: str) -> None:
        self.marks.append((name, time.time()))

    def wrap(self, owner, attribute: str, label: str) -> None:
        """Time every call of ``owner.attribute`` (in whichever thread it runs)."""
        original = getattr(owner, attribute)
        spans = self.spans

        def timed(*args, **kwargs):
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append((label, start, time.time()))
        setattr(owner, attribute, classmethod(lambda cls, *a, **k: timed(*a, **k))
                if isinstance(owner.__dict__.get(attribute), classmethod) else timed)


def rss_mib(field: str) -> float:
    return resident_bytes(field) / 2**20


class MarkStages(logging.Handler):
    """Marks the start-up stages that falco.ui.startup logs, when they happen."""

    def __init__(self, clock: Clock):
        super().__init__(logging.INFO)
        self.clock = clock

    def emit(self, record: logging.LogRecord) -> None:
        self.clock.marks.append((record.getMessage(), record.created))


def child(weights: str) -> None:
    clock = Clock()
    clock.mark("interpreter ready")
    import torch
    clock.mark("import torch")
    from falco import pipeline
    from falco.bank import FakeBank
    from falco.models import io
    from falco.ui import startup
    clock.mark("import falco.pipeline (open_clip, dlib)")

    # start_app's fetch (falco.ui.startup.weights_fetcher), which the engine's loader calls again after a failure
    clock.wrap(startup, "fetch_weights", "find + verify weight files (sha256)")
    for name in ("load_generator", "load_e4e", "load_arcface", "load_farl"):
        clock.wrap(io, name, f"{name} (read + build)")
    clock.wrap(FakeBank, "load", "fake bank load")
    clock.wrap(pipeline, "FaceAnalyzer", "dlib landmarks model")
    clock.wrap(pipeline, "FaceRecognizer", "dlib recognition model")
    stages = logging.getLogger(startup.__name__)
    stages.setLevel(logging.INFO)
    stages.addHandler(MarkStages(clock))

    # What app.py does: start loading, import Gradio and build the page meanwhile, serve.
    demo, app = startup.start_app(weights=weights, device="cpu", host="127.0.0.1",
                                  prevent_thread_lock=True, quiet=True)
    clock.mark("serving")
    pipe = app.loader.get()
    clock.mark("networks ready (as the first run sees them)")
    loaded_rss = rss_mib("VmRSS:")
    # Weights read from safetensors stay mapped from the file until first used: page them all in.
    with torch.no_grad():
        for net in (pipe.nets.generator, pipe.nets.e4e, pipe.nets.arcface, pipe.nets.farl):
            for tensor in net.state_dict().values():
                tensor.float().sum()
    clock.mark("every weight read once (as the first run does)")
    demo.close()
    import gradio
    clock.marks.sort(key=lambda mark: mark[1])
    print(json.dumps({"marks": clock.marks, "spans": clock.spans, "peak_rss_mib": rss_mib("VmHWM:"),
                      "loaded_rss_mib": loaded_rss, "rss_mib": rss_mib("VmRSS:"),
                      "torch": torch.__version__, "gradio": gradio.__version__}))


# --- The parent: weights, process, report ----------------------------------------------------------
def random_weight_set(folder: Path) -> None:
    """A full-size random set with a full-size bank of noise rows, and its manifest."""
    import torch

    from falco.bank import FakeBank
    from falco.weights import ARTIFACTS, MANIFEST_NAME
    from falco.weights.manifest import describe_folder
    from falco.weights.random_set import make_random_weights

    make_random_weights(folder, tiny=False, progress=False)
    small = FakeBank.load(folder / ARTIFACTS["fake_bank"])
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(FULL_BANK_ROWS, small.w.shape[1], generator=gen)
    embeddings = torch.nn.functional.normalize(torch.randn(FULL_BANK_ROWS, small.embeddings.shape[1], generator=gen),
                                               dim=-1)
    FakeBank(w, embeddings, torch.arange(FULL_BANK_ROWS, dtype=torch.int64), small.config).save(
        folder / ARTIFACTS["fake_bank"])
    describe_folder(folder, None, note="RANDOM NOISE weights with a full-size noise bank (startup benchmark)").write(
        folder / MANIFEST_NAME)


def report(result: dict, spawned: float) -> None:
    print(f"torch {result['torch']}, gradio {result['gradio']}; seconds since the process was spawned:")
    previous = spawned
    for name, at in result["marks"]:
        print(f"  {at - spawned:7.2f}  (+{at - previous:5.2f})  {name}")
        previous = at
    print("pipeline loading, in the background thread (start -> end, seconds since spawn):")
    for label, start, end in result["spans"]:
        print(f"  {start - spawned:7.2f} -> {end - spawned:7.2f}  {end - start:6.2f} s  {label}")
    print(f"resident memory: {result['loaded_rss_mib'] / 1024:.2f} GiB when the networks are ready, "
          f"{result['rss_mib'] / 1024:.2f} GiB once every weight was read; "
          f"peak {result['peak_rss_mib'] / 1024:.2f} GiB")


@contextmanager
def weights_folder(given: str | None):
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="falco-startup-") as tmp:
        start = time.perf_counter()
        random_weight_set(Path(tmp))
        print(f"(made a full-size random weight set in {time.perf_counter() - start:.0f} s; not part of startup)")
        yield tmp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m falco.benchmarks.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="weights folder (default: a temporary full-size random set)")
    parser.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.weights)
        return
    with weights_folder(args.weights) as folder:
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
        spawned = time.time()
        done = subprocess.run([sys.executable, "-m", "falco.benchmarks.startup", CHILD_FLAG, "--weights", folder],
                              env=env, capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parents[2])
        if done.returncode != 0:
            sys.exit(f"the app process failed:\n{done.stderr[-3000:]}")
        report(json.loads(done.stdout.strip().splitlines()[-1]), spawned)


if __name__ == "__main__":
    main()
