"""The command line: ``falco`` (or ``python -m falco.cli``).

    falco anonymize IN_DIR OUT_DIR [--margin 0 0.5] [--shard 0/4] [--weights SRC]
    falco anonymize CLIP.mp4 OUT_DIR [--margin 0] [--refine-steps K]   (clips in IN_DIR are done too)
    falco bank build --out fake_bank.safetensors --n 60000 [--weights SRC] [--device cuda]

Arguments become values here; the work is falco.batch's (folder trees) and falco.bank's.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from falco import batch
from falco.checks import check_fake_k, check_run_settings
from falco.config import BankConfig, OptimConfig
from falco.errors import FalcoError
from falco.video import files as clips

EXIT_IMAGES_FAILED = 3   # the run went through, but some images have a failure record: not 1, which stopped it
ANONYMIZE_HELP = batch.__doc__.split("\n\n", 1)[1] + f"""
Exit status: 0 every image done (in this run or an earlier one); {EXIT_IMAGES_FAILED} the run went through but
some images failed, in this run or an earlier one (their records say why; --retry-failed runs
them again); 1 an error stopped the run; 2 a usage error, found before the networks load;
130 interrupted (Ctrl-C or SIGTERM): run the same command again to resume.
"""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def parser() -> argparse.ArgumentParser:
    defaults, bank = OptimConfig(), BankConfig()
    top = argparse.ArgumentParser(prog="falco", description="FALCO face anonymization: the command line.")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("anonymize", help="anonymize a folder tree into a mirror tree", description=ANONYMIZE_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("in_dir", type=Path, help="a folder tree of photos and clips, or one clip")
    run.add_argument("out_dir", type=Path)
    run.add_argument("--margin", type=float, nargs="+", default=[defaults.margin],
                     help="m values (several run as one batch per photo)")
    run.add_argument("--shard", type=str, default="0/1", help="i/n: this run's share of the files, 0 <= i < n")
    run.add_argument("--weights", default=None, help="Hub repo id[@revision] or local weights folder")
    run.add_argument("--device", default=None, help="e.g. cuda:1 (default: CUDA when available)")
    run.add_argument("--steps", type=int, default=defaults.steps)
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--fake-k", type=int, default=bank.k_nearest,
                     help="draw the fake among the k nearest (with --seed)")
    run.add_argument("--loss-on-skip256", action="store_true", help="losses on the generator's 256 output")
    run.add_argument("--refine-steps", type=int, default=0,
                     help="clips: optimisation steps per frame, warm-started from the person's identity")
    run.add_argument("--retry-failed", action="store_true", help="run again the images whose record is a failure")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(usage=run)

    banks = sub.add_parser("bank", help="the fake bank").add_subparsers(dest="bank_command", required=True)
    build = banks.add_parser("build", help="build (or resume, or extend) a fake bank")
    build.add_argument("--out", required=True, type=Path)
    build.add_argument("--n", type=int, default=bank.size)
    build.add_argument("--psi", type=float, default=bank.truncation_psi)
    build.add_argument("--seed", type=int, default=bank.seed)
    build.add_argument("--chunk", type=int, default=bank.chunk_rows, help="rows per resumable part")
    build.add_argument("--batch", type=int, default=bank.render_batch, help="images per generator call")
    build.add_argument("--weights", default=None, help="Hub repo id or local folder of the networks")
    build.add_argument("--device", default=None)
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(usage=build)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return build_bank(args, args.usage) if args.command == "bank" else anonymize(args, args.usage)


def anonymize(args: argparse.Namespace, usage: argparse.ArgumentParser) -> int:
    # From here to the end Ctrl-C, and SIGTERM (a scheduler's stop) as Ctrl-C, answer with one line and 130:
    # a stop during the checks, the imports or the loading is no less expected than one between two files.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    created: list[Path] = []
    finished = False
    try:
        try:
            shard = batch.Shard.parse(args.shard)
        except ValueError as err:
            usage.error(str(err))
        if not args.in_dir.is_dir() and not clips.is_clip(args.in_dir):
            usage.error(f"{args.in_dir} is neither a folder nor a clip")
        if args.refine_steps < 0:
            usage.error("--refine-steps must not be negative")
        optim = replace(OptimConfig(), steps=args.steps, seed=args.seed, loss_on_skip256=args.loss_on_skip256)
        try:   # before the networks load, so a typo costs no load
            margins = check_run_settings(args.margin, optim, args.fake_k)
            created = batch.prepare_out_dir(args.in_dir, args.out_dir)
        except FalcoError as err:
            usage.error(str(err))
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from falco.pipeline import FalcoPipeline  # imports torch, open_clip, dlib: after the usage checks
        pipeline = FalcoPipeline.from_pretrained(args.weights, device=args.device, progress=not args.no_progress)
        check_fake_k(args.fake_k, len(pipeline.bank))   # the one rule that needs the bank
        summary = batch.Summary()
        if args.in_dir.is_dir():
            summary = batch.anonymize_tree(pipeline, args.in_dir, args.out_dir, margins, optim, args.fake_k,
                                           shard, args.retry_failed, progress=not args.no_progress)
        summary = clips.combined(summary, clips.anonymize_clips(   # a clip, or the tree's clips
            pipeline, args.in_dir, args.out_dir, margins, optim, args.fake_k, shard, args.retry_failed,
            not args.no_progress, args.refine_steps))
        finished = True
        print(json.dumps({"out_dir": str(args.out_dir), **asdict(summary)}))
        return EXIT_IMAGES_FAILED if summary.failed or summary.failed_before else 0
    except FalcoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        when = str(stop) if isinstance(stop, batch.Interrupted) else "interrupted before the first image"
        print(f"{when}; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not finished:   # a run that wrote nothing leaves no empty output folder behind
            batch.remove_empty(created)


def build_bank(args: argparse.Namespace, usage: argparse.ArgumentParser) -> int:
    if args.n < 1:
        usage.error("--n must be at least 1")
    from falco import bank
    from falco.device import resolve_device
    from falco.models.networks import load_networks
    from falco.weights import fetch_weights

    config = BankConfig(truncation_psi=args.psi, size=args.n, seed=args.seed, chunk_rows=args.chunk,
                        render_batch=args.batch)
    try:
        device = resolve_device(args.device)
        paths = fetch_weights(args.weights, names=("generator", "farl"), progress=not args.no_progress)
        nets = load_networks(paths, device, names=("generator", "farl"))
        built = bank.build_bank(args.out, args.n, nets.generator, nets.mean_w, nets.farl, config,
                                progress=not args.no_progress)
    except FalcoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: {len(built)} fakes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
