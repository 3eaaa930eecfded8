"""Throughput of a dataset run: images per hour of ``anonymize --dataset``, from the first row to the written dataset.

    python -m falco.benchmarks.dataset                                  # CPU: 2 aligned crops, the app's CPU settings
    python -m falco.benchmarks.dataset --device cuda --images 40 --batch 8 --steps 50

Full-size networks with random weights (the reference seeding rule; nothing is downloaded; a bank of
``--bank-size`` fakes), unless ``--weights`` names a set.  The rows are the test photo's FFHQ crop at 1024
px, every other one mirrored, in a ``datasets`` dataset with a label column, run as ``--aligned`` inputs
through the command line's own code (falco.datasets_io: records, images, W+ codes, then the assembled
dataset).  The networks load before the clock starts; the time per image includes everything else.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from falco.benchmarks.optim import load_average
from falco.config import AppConfig, OptimConfig
from falco.datasets_io import SourceDataset, anonymize_dataset, write_dataset

FACE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "align" / "astronaut_face0_1024.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m falco.benchmarks.dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights", default=None, help="a weight set (default: full-size random weights, made here)")
    parser.add_argument("--bank-size", type=int, default=2, help="fakes in the random set's bank")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="photos per optimisation (--batch of the command line)")
    parser.add_argument("--steps", type=int, default=None,
                        help="default: the app's CPU setting on the CPU (10 steps, losses on the 256 output), else 50")
    parser.add_argument("--margin", type=float, nargs="+", default=[0.0])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import datasets

    from falco.pipeline import FalcoPipeline
    from falco.weights.random_set import make_random_weights
    args = parse_args(argv)
    optim = AppConfig().cpu_optim if args.device == "cpu" else OptimConfig()
    optim = replace(optim, steps=args.steps or optim.steps)
    face = Image.open(FACE).convert("RGB")
    rows = [face if i % 2 == 0 else face.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for i in range(args.images)]
    with tempfile.TemporaryDirectory(prefix="falco-bench-") as scratch:
        weights = args.weights
        if weights is None:
            started = time.perf_counter()
            weights = str(Path(scratch) / "weights")
            make_random_weights(weights, tiny=False, bank_size=args.bank_size)
            print(f"random full-size weights made in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        pipeline = FalcoPipeline.from_pretrained(weights, device=args.device, progress=False)
        print(f"networks loaded in {time.perf_counter() - started:.1f} s")
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
        source = SourceDataset(datasets.Dataset.from_dict({"image": rows, "label": list(range(len(rows)))},
                                                          features=features), "image")
        out = Path(scratch) / "out"
        before = load_average()
        started = time.perf_counter()
        summary = anonymize_dataset(pipeline, source, out, args.margin, optim, 1, aligned=True,
                                    batch_size=args.batch, progress=False)
        write_dataset(pipeline, source, out, args.margin, optim, 1, aligned=True, progress=False)
        seconds = time.perf_counter() - started
    if summary.done != args.images:
        raise SystemExit(f"only {summary.done} of {args.images} images were anonymized: {summary}")
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
             else f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    print(f"{where}, torch {torch.__version__}: {args.images} images x {len(args.margin)} m, batch {args.batch}, "
          f"{optim.steps} steps{', losses on the 256 output' if optim.loss_on_skip256 else ''}")
    print(f"load average before: {before}, after: {load_average()} (other jobs slow a shared machine down)")
    print(f"{seconds / args.images:.1f} s per image, {3600 * args.images / seconds:.0f} images/hour")


if __name__ == "__main__":
    main()
