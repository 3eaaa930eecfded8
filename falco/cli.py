"""The command line: ``falco`` (or ``python -m falco.cli``).

    falco anonymize IN_DIR OUT_DIR [--margin 0 0.5] [--aligned] [--batch N] [--weights SRC]
    falco anonymize IN_DIR OUT_DIR --method blur|pixelate|mask|nearest-fake   # the baselines (falco.baselines)
    falco anonymize CLIP.mp4 OUT_DIR [--margin 0] [--refine-steps K]   (clips in IN_DIR are done too)
    falco anonymize --dataset NAME_OR_PATH [--split S] [--image-column C] [--streaming] OUT_DIR [--push-to-hub REPO]
    accelerate launch -m falco.cli anonymize ...          # one process per GPU, on one or several machines
    falco bank build --out fake_bank.safetensors --n 60000 [--weights SRC] [--device cuda]

Arguments become values here; the work is falco.photo_folders's (folder trees), falco.datasets_io's and falco.bank's.
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

from falco import photo_folders
from falco.checks import check_batch_size, check_fake_k, check_refine_steps, check_run_settings
from falco.config import CLASSICAL_METHODS, DEFAULT_MARGIN, METHODS, BankConfig, CliConfig, OptimConfig
from falco.errors import FalcoError
from falco.video import clip_folders

EXIT_IMAGES_FAILED = 3   # the run went through, but some images have a failure record: not 1, which stopped it
ANONYMIZE_HELP = photo_folders.__doc__.split("\n\n", 1)[1] + f"""
Exit status: 0 every image done (in this run or an earlier one); {EXIT_IMAGES_FAILED} the run went through but
some images failed, in this run or an earlier one (their records say why; --retry-failed runs
them again); 1 an error stopped the run; 2 a usage error, found before the networks load;
130 interrupted (Ctrl-C or SIGTERM): run the same command again to resume.  Under accelerate launch
the launcher reports any process's non-zero status as a failure.
"""
SHARD_GONE = ("--shard is gone: start the run with `accelerate launch [--num_processes N] -m falco.cli anonymize ...`, "
              "which gives each process (one per GPU, on one or several machines) its share of the inputs.")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def parser() -> argparse.ArgumentParser:
    defaults, bank, cli = OptimConfig(), BankConfig(), CliConfig()
    top = argparse.ArgumentParser(prog="falco", description="FALCO face anonymization: the command line.")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("anonymize", help="anonymize a folder tree (or a clip, or a dataset) into a mirror tree "
                                           "(or dataset)", description=ANONYMIZE_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("in_dir", type=Path, nargs="?", help="a folder tree of photos and clips, or one clip "
                                                          "(or give --dataset)")
    run.add_argument("out_dir", type=Path)
    run.add_argument("--margin", type=float, nargs="+", default=None,
                     help=f"m values (several run as one batch per photo, and per person of a clip; default "
                          f"{DEFAULT_MARGIN:g}); FALCO's alone")
    run.add_argument("--method", choices=METHODS, default=METHODS[0],
                     help="falco; or a baseline for the comparison table, photos only, one image per photo: blur, "
                          "pixelate, mask (the face region, with FALCO's detection, alignment and paste-back; no "
                          "network loads), nearest-fake (FALCO's paired fake, not optimised)")
    run.add_argument("--shard", help=argparse.SUPPRESS)   # gone (SHARD_GONE), refused with a pointer
    run.add_argument("--aligned", action="store_true",
                     help="inputs are FFHQ-aligned crops (FFHQ, CelebA-HQ): no detection, alignment or paste-back")
    run.add_argument("--batch", type=int, default=1, help="photos whose faces are optimised together (a GPU's gain)")
    data = run.add_argument_group("Hugging Face datasets (falco.datasets_io)")
    data.add_argument("--dataset", help="Hub dataset id or local dataset folder, instead of IN_DIR")
    data.add_argument("--split", default=cli.dataset_split)
    data.add_argument("--image-column", default=None,
                      help=f"default: {cli.dataset_image_column!r}, else the only image column")
    data.add_argument("--streaming", action="store_true",
                      help="read the dataset as it streams: a Hub dataset is not downloaded first")
    data.add_argument("--push-to-hub", metavar="REPO", default=None, help="push the anonymized dataset to this repo")
    run.add_argument("--weights", default=None, help="Hub repo id[@revision] or local weights folder")
    run.add_argument("--device", default=None, help="e.g. cuda:1 (default: CUDA when available)")
    run.add_argument("--steps", type=int, default=defaults.steps)
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--fake-k", type=int, default=bank.k_nearest,
                     help="draw the fake among the k nearest (with --seed)")
    run.add_argument("--loss-on-skip256", action="store_true", help="losses on the generator's 256 output")
    run.add_argument("--lambda-id", type=float, default=defaults.lambda_id, help="weight of the ArcFace identity loss")
    run.add_argument("--lambda-attr", type=float, default=defaults.lambda_attr,
                     help="weight of the FaRL attribute loss (0: identity loss only, an ablation)")
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
    build.add_argument("--batch", type=int, default=bank.render_batch,
                       help="images per generator call (default: 1 on the CPU, 8 on a GPU)")
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
        if args.shard is not None:
            usage.error(SHARD_GONE)
        if (args.in_dir is None) == (args.dataset is None):
            usage.error("give a folder of photos (IN_DIR) or --dataset, one of them")
        if args.streaming and args.dataset is None:
            usage.error("--streaming reads a --dataset as it streams: give --dataset, or leave out --streaming")
        if args.in_dir is not None and not args.in_dir.is_dir() and not clip_folders.is_clip(args.in_dir):
            usage.error(f"{args.in_dir} is neither a folder nor a clip")
        baseline = args.method != "falco"
        if baseline and args.margin is not None:
            usage.error(f"--margin is FALCO's m; --method {args.method} has none: leave out --margin")
        if baseline and args.in_dir is not None and args.in_dir.is_file():
            usage.error(f"--method {args.method} does photos; clips are FALCO's alone")
        optim = replace(OptimConfig(), steps=args.steps, seed=args.seed, loss_on_skip256=args.loss_on_skip256,
                        lambda_id=args.lambda_id, lambda_attr=args.lambda_attr)
        try:   # before the networks load, so a typo costs no load
            margins = check_run_settings(args.margin or [DEFAULT_MARGIN], optim, args.fake_k)
            if baseline:
                from falco.baselines import NO_MARGIN
                margins = NO_MARGIN
            check_batch_size(args.batch)
            check_refine_steps(args.refine_steps)
            local = args.in_dir or (Path(args.dataset) if Path(args.dataset).is_dir() else None)
            created = photo_folders.prepare_out_dir(local, args.out_dir)
            if args.dataset is not None:
                from falco import datasets_io
                dataset = datasets_io.open_dataset(args.dataset, args.split, args.image_column,
                                                   streaming=args.streaming)
        except FalcoError as err:
            usage.error(str(err))
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from falco.baselines import load_method  # imports torch, open_clip, dlib: after the usage checks
        state = photo_folders.process_state(args.device)   # accelerate's: this process's rank, device and share
        device = args.device or (state.device if state.device.type == "cuda" else None)
        pipeline = load_method(args.method, args.weights, device, progress=not args.no_progress)
        if args.method not in CLASSICAL_METHODS:
            check_fake_k(args.fake_k, len(pipeline.bank))   # the one rule that needs the bank
        shard = photo_folders.Shard(state.process_index, state.num_processes)
        run = {"margins": margins, "optim": optim, "fake_k": args.fake_k, "retry_failed": args.retry_failed,
               "progress": not args.no_progress, "aligned": args.aligned, "batch_size": args.batch, "shard": shard}
        if args.dataset is not None:
            summary = datasets_io.anonymize_dataset(pipeline, dataset, args.out_dir, **run)
        else:
            summary = photo_folders.Summary()
            if args.in_dir.is_dir():
                summary = photo_folders.anonymize_tree(pipeline, args.in_dir, args.out_dir, **run)
            if not baseline:
                summary = summary + clip_folders.anonymize_clips(   # a clip, or the tree's clips
                    pipeline, args.in_dir, args.out_dir, margins, optim, args.fake_k, shard, args.retry_failed,
                    not args.no_progress, args.refine_steps)
        summary = photo_folders.merge_summaries(state, summary)   # waits for every process
        finished = True
        code = EXIT_IMAGES_FAILED if summary.failed or summary.failed_before else 0
        if not state.is_main_process:
            return code
        photo_folders.warn_not_aligned(summary)
        line = {"out_dir": str(args.out_dir), "method": args.method, **asdict(summary)}
        if args.dataset is not None:
            line.update(datasets_io.write_dataset(pipeline, dataset, args.out_dir, margins, optim, args.fake_k,
                                                  args.aligned, args.push_to_hub, not args.no_progress))
        print(json.dumps(line))
        return code
    except FalcoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        when = str(stop) if isinstance(stop, photo_folders.Interrupted) else "interrupted before the first image"
        print(f"{when}; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not finished:   # a run that wrote nothing leaves no empty output folder behind
            photo_folders.remove_empty(created)


def build_bank(args: argparse.Namespace, usage: argparse.ArgumentParser) -> int:
    if args.n < 1:
        usage.error("--n must be at least 1")
    if args.batch is not None and args.batch < 1:
        usage.error("--batch must be at least 1")
    from falco import allocator, bank
    from falco.device import resolve_device
    from falco.models.networks import load_networks
    from falco.weights import fetch_weights

    config = BankConfig(truncation_psi=args.psi, size=args.n, seed=args.seed, chunk_rows=args.chunk,
                        render_batch=args.batch)
    try:
        device = resolve_device(args.device)
        if device.type == "cpu":
            allocator.reuse_freed_memory()   # each fake reuses the last one's memory (falco.allocator)
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
