"""FALCO weights: fetch and verify a set, make a random one, or publish the official checkpoints.

    python -m falco.weights fetch  [--weights REPO[@REV]|FOLDER]
    python -m falco.weights random --out DIR [--tiny]
    python -m falco.weights prepare [--out DIR] [--bank-size N] [--device D] [--grow-to N]
    python -m falco.weights publish --repo user/name --e4e ... --arcface ... --farl ... \\
        --landmarks ... --recognition ... --bank ... [--generator ...] [--out DIR --dry-run]
    python -m falco.weights publish --repo user/name --from-official [--bank-size N] [--device D] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from falco.config import DEFAULT_WEIGHTS_REPO, WEIGHTS_REPO_ENV, BankConfig
from falco.errors import FalcoError
from falco.weights.hub import check_names, fetch_weights
from falco.weights.manifest import ARTIFACTS, PROJECT_MANIFEST
from falco.weights.prepare import PREPARE_COMMAND, PUBLISH_COMMAND, PrepareProgress, prepare_weights, prepared_folder
from falco.weights.storage import keep_on_persistent_storage

# random_set and publish import torch where their commands run: fetch (a first download, a CI step, a Space's
# build) answers without torch's seconds of import.

OFFICIAL_FILE_ARGS = ("e4e", "arcface", "farl", "landmarks", "recognition")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m falco.weights", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    fetch = sub.add_parser("fetch", help="download and verify the weights into the Hugging Face cache")
    fetch.add_argument("--weights", default=None,
                       help=f"Hub repo id[@revision] or local folder "
                            f"(default ${WEIGHTS_REPO_ENV} or {DEFAULT_WEIGHTS_REPO})")
    fetch.add_argument("--names", nargs="+", choices=list(ARTIFACTS), default=None)
    fetch.add_argument("--manifest", type=Path, default=None, help="pinned manifest (default weights/manifest.json)")
    fetch.add_argument("--no-progress", action="store_true")

    rand = sub.add_parser("random", help="write a complete random-noise weight set in Hub layout")
    rand.add_argument("--out", type=Path, required=True)
    rand.add_argument("--tiny", action="store_true", help="tiny architectures (seconds on a CPU)")
    rand.add_argument("--names", nargs="+", choices=list(ARTIFACTS), default=None)
    rand.add_argument("--bank-size", type=int, default=None)

    prep = sub.add_parser("prepare", help="download the official files, convert them and build the fake bank: "
                                          "the set the app uses when no published one exists")
    prep.add_argument("--out", type=Path, default=None, help="default: $FALCO_PREPARED_WEIGHTS or "
                                                             "$HF_HOME/falco/prepared-weights")
    prep.add_argument("--bank-size", type=int, default=None,
                      help=f"fakes in the bank (default {BankConfig().size} on a GPU, "
                           f"{BankConfig().cpu_size} on a CPU)")
    prep.add_argument("--device", default=None, help="device building the bank (default cuda where there is one)")
    prep.add_argument("--grow-to", type=int, default=None, metavar="N",
                      help="then grow the bank to N fakes beside the set, as the app does while idle (resumable: "
                           "the same command goes on where it stopped)")

    pub = sub.add_parser("publish", help="convert the official files to the Hub layout and upload them")
    pub.add_argument("--repo", required=True, help="Hub repo id to upload to (user/name)")
    pub.add_argument("--from-official", action="store_true",
                     help="download the official files (as prepare does) instead of naming them")
    pub.add_argument("--e4e", type=Path, help="e4e_ffhq_encode.pt")
    pub.add_argument("--arcface", type=Path, help="model_ir_se50.pth")
    pub.add_argument("--farl", type=Path, help="FaRL-Base-Patch16-LAIONFace20M-ep64.pth")
    pub.add_argument("--landmarks", type=Path, help="shape_predictor_68_face_landmarks.dat[.bz2]")
    pub.add_argument("--recognition", type=Path, help="dlib_face_recognition_resnet_model_v1.dat[.bz2]")
    pub.add_argument("--bank", type=Path, default=None,
                     help="a fake_bank.safetensors built from these networks (default: build one here)")
    pub.add_argument("--bank-size", type=int, default=None, help="rows of the bank built here (default 60000)")
    pub.add_argument("--device", default=None,
                     help="device for building the bank (cuda is much faster; default: cpu, or with "
                          "--from-official cuda where there is one)")
    pub.add_argument("--generator", type=Path, default=None,
                     help="stylegan2-ffhq-config-f.pt (default: the decoder inside the e4e file)")
    pub.add_argument("--out", type=Path, default=None, help="write the Hub folder here (default: a temp folder)")
    pub.add_argument("--dry-run", action="store_true", help="only write the folder (needs --out)")
    pub.add_argument("--private", action="store_true")
    pub.add_argument("--manifest", type=Path, default=PROJECT_MANIFEST,
                     help="where to write the pinned manifest after the upload")
    args = parser.parse_args(argv)
    if getattr(args, "grow_to", None) is not None and args.grow_to < 1:
        parser.error("--grow-to must be at least 1")
    keep_on_persistent_storage()   # before huggingface_hub is imported: it reads HF_HOME once

    try:
        if args.command == "fetch":
            paths = fetch_weights(args.weights, args.names, progress=not args.no_progress, manifest=args.manifest)
            for name in check_names(args.names):
                print(f"{name}: {paths[name]}")
        elif args.command == "random":
            from falco.weights.random_set import make_random_weights
            make_random_weights(args.out, args.tiny, args.names, args.bank_size, progress=True)
            print(f"random {'tiny' if args.tiny else 'full-size'} weights (noise) in {args.out}")
        elif args.command == "prepare":
            folder = _prepare(args.out, args.bank_size, args.device, PREPARE_COMMAND)
            print(f"weights prepared in {folder}")
            if args.grow_to is not None:
                return _grow(folder, args.grow_to, args.device)
        else:
            from falco.weights.publish import publish, upload_weights
            folder = args.out
            if args.from_official:
                # A published set gets the paper's bank whatever the device; its own folder, not the app's cache.
                folder = _prepare(folder or prepared_folder().with_name("published-weights"),
                                  args.bank_size or BankConfig().size, args.device, PUBLISH_COMMAND)
                manifest = None if args.dry_run else upload_weights(folder, args.repo, args.private, args.manifest)
            else:
                missing = [f"--{name}" for name in OFFICIAL_FILE_ARGS if getattr(args, name) is None]
                if missing:
                    parser.error(f"publish needs {', '.join(missing)} (or --from-official)")
                if args.dry_run and args.out is None:
                    parser.error("--dry-run needs --out")
                manifest = publish(args.repo, e4e=args.e4e, arcface=args.arcface, farl=args.farl,
                                   landmarks=args.landmarks, recognition=args.recognition, bank=args.bank,
                                   generator=args.generator, bank_size=args.bank_size, device=args.device or "cpu",
                                   out=args.out, dry_run=args.dry_run,
                                   private=args.private, manifest_path=args.manifest)
            if args.dry_run:
                print(f"Hub folder written to {folder} (not uploaded)")
            else:
                print(f"published {args.repo}@{manifest.revision}; pinned manifest written to {args.manifest}: "
                      "commit it")
    except FalcoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _prepare(out: Path | None, bank_size: int | None, device: str | None, built_by: str) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # the bank's size and time estimate
    shown: list[str] = []

    def show(event: PrepareProgress) -> None:
        # One line per item and stage and per 10 %, so a log stays readable.
        tenths = None if event.fraction is None else int(event.fraction * 10) / 10
        line = PrepareProgress(event.stage, event.item, event.index, event.total, tenths).describe()
        if line not in shown:
            shown.append(line)
            print(line, file=sys.stderr, flush=True)

    return prepare_weights(out, bank_size, device, progress=show, built_by=built_by)


def _grow(folder: Path, n: int, device: str | None) -> int:
    """The set's bank grown to ``n`` fakes beside it (falco.weights.growth); Ctrl-C keeps the parts saved so far."""
    from falco.device import resolve_device
    from falco.models import io
    from falco.weights.growth import grow_bank, growth_folder
    device = resolve_device(device)
    generator, mean_w = io.load_generator(folder / ARTIFACTS["generator"], device)
    farl = io.load_farl(folder / ARTIFACTS["farl"], device)

    def saved(bank) -> None:
        print(f"fake bank: {len(bank)} of {n} fakes", file=sys.stderr, flush=True)
    try:
        bank = grow_bank(folder, n, generator, mean_w, farl, on_saved=saved)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to go on growing the bank", file=sys.stderr)
        return 130
    print(f"the fake bank holds {len(bank)} fakes (rows after the set's own in {growth_folder(folder)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
