"""Peak resident memory of the app and of each job on full-size weights: the figures of README "Memory".

    python -m falco.weights random --out /tmp/falco-full            # full-size random weights (outputs are noise)
    python -m falco.benchmarks.memory --weights /tmp/falco-full     # every job
    python -m falco.benchmarks.memory --weights /tmp/falco-full --jobs app bank

Each job runs in processes of its own, on the CPU, at the app's CPU defaults unless named otherwise; the
resident memory of the whole process tree is sampled every 0.1 s (falco.benchmarks.tree_memory), and each
figure is printed beside its target (issue 21's).  Jobs:

- ``app``: ``python app.py`` idle once its networks are loaded, a photo run (one face, 3 steps) and Compare m
  (five m, 2 steps) through the API, then what the server holds 1, 3, 5 and 20 s after them.
- ``bank``: ``falco bank build --n 12``, with its seconds per fake.
- ``clip``: a 6-frame 512 px clip through the command line, losses on the 256 px output (the app's CPU path), 2
  steps; ``clip-exact``: the same with the losses at 1024 (the command line's default).
- ``first-start``: what the app's first start does, from full-size files in the official containers served over
  HTTP: download, convert, the CPU bank (``BankConfig.cpu_size`` fakes), load the networks, one photo run.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from falco.benchmarks.tree_memory import TreeSampler

ROOT = Path(__file__).resolve().parents[2]
PHOTO = ROOT / "tests" / "fixtures" / "align" / "astronaut.png"
GIB = 2**30
JOBS = ("app", "bank", "clip", "clip-exact", "first-start")
LOADED_LINE = "the networks are loaded"


@dataclass
class Figure:
    job: str
    what: str
    bytes: int
    target_gib: float | None = None
    note: str = ""
    seconds: float | None = None   # how long the job took, where it is a job of its own

    def row(self) -> str:
        target = "" if self.target_gib is None else f"{self.target_gib:g}"
        verdict = "" if self.target_gib is None else ("within" if self.bytes <= self.target_gib * GIB else "OVER")
        note = "; ".join(part for part in (f"{self.seconds:.0f} s" if self.seconds is not None else "", self.note)
                         if part)
        return f"| {self.job} | {self.what} | {self.bytes / GIB:.2f} | {target} | {verdict} | {note} |"


def anonymous_bytes(pid: int) -> int:
    """The process's anonymous resident memory (heap, stacks): its resident set less mapped files, which are the
    weights here (safetensors maps them) and which the kernel can drop and read again under pressure."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        return next(int(line.split()[1]) for line in rollup if line.startswith("Anonymous:")) * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measured(job: str, what: str, command: list[str], target: float | None, env: dict | None = None) -> Figure:
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    with TreeSampler(process.pid, every=0.1) as sampler:
        status = process.wait()
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit status {status}")
    return Figure(job, what, sampler.peak, target, seconds=time.monotonic() - started)


# --- The app ---------------------------------------------------------------------------------------------------
def app_figures(weights: str) -> list[Figure]:
    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "FALCO_WEIGHTS_REPO": weights, "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen([sys.executable, "app.py", "--device", "cpu", "--port", str(port)], cwd=ROOT, env=env,
                               stderr=subprocess.PIPE, text=True)
    loaded = threading.Event()

    def follow() -> None:   # the app's log, passed on; the line that says the networks are loaded is the signal
        for line in process.stderr:
            sys.stderr.write(line)
            if LOADED_LINE in line:
                loaded.set()
    threading.Thread(target=follow, daemon=True).start()
    figures = []
    try:
        with TreeSampler(process.pid, every=0.1) as sampler:
            if not loaded.wait(600):
                raise SystemExit("the app did not load its networks within 10 minutes")
            figures.append(Figure("app", "start, until the networks are loaded", sampler.phase()))
            time.sleep(5)
            figures.append(Figure("app", "idle, networks loaded (5 s)", sampler.phase(), 2.5))
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            photo = handle_file(str(PHOTO))
            for what, margins, steps in (("photo run (one face, 3 steps)", "0", 3),
                                         ("Compare m (five m, 2 steps)", "0,0.25,0.5,0.75,1", 2)):
                started = time.monotonic()
                client.predict(photo, "all", margins, steps, 0.01, 10.0, 0.1, 0, False, api_name="/anonymize")
                figures.append(Figure("app", what, sampler.phase(), 4.0, seconds=time.monotonic() - started))
            ended = time.monotonic()
            for after in (1, 3, 5, 20):
                time.sleep(max(ended + after - time.monotonic(), 0))
                figures.append(Figure("app", f"held {after} s after the runs", sampler.now,
                                      3.0 if after >= 5 else None, f"{anonymous_bytes(process.pid) / GIB:.2f} GiB "
                                                                   "anonymous, the rest mapped files (weights)"))
    finally:
        process.terminate()
        process.wait(30)
    return figures


# --- Jobs of the command line ------------------------------------------------------------------------------------
def bank_figures(weights: str, folder: Path, n: int = 12) -> list[Figure]:
    figure = measured("bank", f"falco bank build --n {n}",
                      [sys.executable, "-m", "falco.cli", "bank", "build", "--out", str(folder / "bank.safetensors"),
                       "--n", str(n), "--weights", weights, "--device", "cpu", "--no-progress"], 4.0)
    figure.note = f"{figure.seconds / n:.1f} s a fake, loading included"
    return [figure]


def clip_figures(weights: str, folder: Path, exact: bool) -> list[Figure]:
    from PIL import Image

    from falco.video.synthetic import pan_zoom_frames, write_clip
    clip = folder / "clip.mkv"
    if not clip.exists():
        write_clip(clip, pan_zoom_frames(Image.open(PHOTO), 6, (512, 512)))
    out = folder / ("out-exact" if exact else "out")
    command = [sys.executable, "-m", "falco.cli", "anonymize", str(clip), str(out), "--weights", weights,
               "--device", "cpu", "--steps", "2", "--no-progress"] + ([] if exact else ["--loss-on-skip256"])
    what = "6-frame 512 px clip, " + ("losses at 1024 (exact path)" if exact else "losses at 256 (app's CPU path)")
    return [measured("clip-exact" if exact else "clip", what, command, 8.0 if exact else 4.0)]


# --- The first start -----------------------------------------------------------------------------------------------
def write_official_files(folder: Path) -> None:
    """Full-size random networks in the official checkpoints' containers (e4e's .pt with the generator inside,
    ArcFace's .pth, FaRL's .pth), as the first start downloads them; dlib's come from the installed package."""
    import torch

    from falco.models import io
    from falco.models.random_weights import random_network
    generator, e4e = random_network("generator"), random_network("e4e")
    latent_avg = io.estimate_mean_w(generator, samples=4096).expand(e4e.config["n_styles"], -1).clone()
    torch.save({"state_dict": {**{f"encoder.{k}": v for k, v in e4e.state_dict().items()},
                               **{f"decoder.{k}": v for k, v in generator.state_dict().items()}},
                "latent_avg": latent_avg, "opts": {"stylegan_size": 1024}}, folder / "e4e_ffhq_encode.pt")
    del generator, e4e
    torch.save(random_network("arcface").state_dict(), folder / "model_ir_se50.pth")
    farl = random_network("farl").state_dict()
    torch.save({"state_dict": {**farl, "text_projection": torch.zeros(512, 512)}},
               folder / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth")


def first_start_child(folder: Path) -> None:
    """Runs in the measured process: serves ``folder/official`` over HTTP, points the catalogue of official files
    at it, then prepares the set, loads the networks and anonymizes a photo as the app's first start does."""
    from dataclasses import replace
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from falco.config import OptimConfig
    from falco.pipeline import FalcoPipeline
    from falco.weights import official
    from falco.weights.prepare import prepare_weights

    handler = partial(SimpleHTTPRequestHandler, directory=str(folder / "official"))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    for name, filename in (("e4e", "e4e_ffhq_encode.pt"), ("arcface", "model_ir_se50.pth"),
                           ("farl", "FaRL-Base-Patch16-LAIONFace20M-ep64.pth")):
        official.OFFICIAL_FILES[name] = replace(official.OFFICIAL_FILES[name],
                                                sources=(official.Source("url", url + filename),))
    started = time.monotonic()
    out = prepare_weights(folder / "prepared", device="cpu")
    print(f"first start: prepared in {time.monotonic() - started:.0f} s", file=sys.stderr)
    pipeline = FalcoPipeline.from_pretrained(str(out), device="cpu", progress=False)
    for _ in pipeline.anonymize(PHOTO, optim=OptimConfig(steps=3, loss_on_skip256=True)):
        pass
    server.shutdown()


def first_start_figures(folder: Path) -> list[Figure]:
    official = folder / "official"
    if not official.is_dir():
        official.mkdir(parents=True)
        code = ("from pathlib import Path; from falco.benchmarks.memory import write_official_files; "
                f"write_official_files(Path({str(official)!r}))")
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)   # not measured: the files are given
    return [measured("first-start", "download, convert, CPU bank, load, one photo run",
                     [sys.executable, "-m", "falco.benchmarks.memory", "--first-start-child", str(folder)], 4.0)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="a full-size weight set (folder in Hub layout)")
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    parser.add_argument("--first-start-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.first_start_child:
        first_start_child(args.first_start_child)
        return
    if not args.weights and set(args.jobs) - {"first-start"}:
        parser.error("--weights is needed for every job but first-start (python -m falco.weights random --out DIR)")
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="falco-memory-") as scratch:
        folder = Path(scratch)
        for job in args.jobs:
            if job == "app":
                figures += app_figures(args.weights)
            elif job == "bank":
                figures += bank_figures(args.weights, folder)
            elif job in ("clip", "clip-exact"):
                figures += clip_figures(args.weights, folder, exact=job == "clip-exact")
            else:
                figures += first_start_figures(folder)
    print("\n| job | what | peak resident GiB | target GiB | | notes |\n| --- | --- | --- | --- | --- | --- |")
    print("\n".join(figure.row() for figure in figures))


if __name__ == "__main__":
    main()
