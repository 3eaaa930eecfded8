"""FALCO weights: fetch and verify a set, make a random one, or publish the official checkpoints.

    python -m falco.weights fetch  [--weights REPO[@REV]|FOLDER]
    python -m falco.weights random --out DIR [--tiny]
    python -m falco.weights publish --repo user/name --e4e ... --arcface ... --farl ... \\
        --landmarks ... --recognition ... --bank ... [--generator ...] [--out DIR --dry-run]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from falco.config import DEFAULT_WEIGHTS_REPO, WEIGHTS_REPO_ENV
from falco.errors import FalcoError
from falco.weights.hub import check_names, fetch_weights
from falco.weights.manifest import ARTIFACTS, PROJECT_MANIFEST
from falco.weights.publish import publish
from falco.weights.random_set import make_random_weights


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

    pub = sub.add_parser("publish", help="convert the official files to the Hub layout and upload them")
    pub.add_argument("--repo", required=True, help="Hub repo id to upload to (user/name)")
    pub.add_argument("--e4e", type=Path, required=True, help="e4e_ffhq_encode.pt")
    pub.add_argument("--arcface", type=Path, required=True, help="model_ir_se50.pth")
    pub.add_argument("--farl", type=Path, required=True, help="FaRL-Base-Patch16-LAIONFace20M-ep64.pth")
    pub.add_argument("--landmarks", type=Path, required=True, help="shape_predictor_68_face_landmarks.dat[.bz2]")
    pub.add_argument("--recognition", type=Path, required=True, help="dlib_face_recognition_resnet_model_v1.dat[.bz2]")
    pub.add_argument("--bank", type=Path, default=None,
                     help="a fake_bank.safetensors built from these networks (default: build one here)")
    pub.add_argument("--bank-size", type=int, default=None, help="rows of the bank built here (default 60000)")
    pub.add_argument("--device", default="cpu", help="device for building the bank (cuda is much faster)")
    pub.add_argument("--generator", type=Path, default=None,
                     help="stylegan2-ffhq-config-f.pt (default: the decoder inside the e4e file)")
    pub.add_argument("--out", type=Path, default=None, help="write the Hub folder here (default: a temp folder)")
    pub.add_argument("--dry-run", action="store_true", help="only write the folder (needs --out)")
    pub.add_argument("--private", action="store_true")
    pub.add_argument("--manifest", type=Path, default=PROJECT_MANIFEST,
                     help="where to write the pinned manifest after the upload")
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            paths = fetch_weights(args.weights, args.names, progress=not args.no_progress, manifest=args.manifest)
            for name in check_names(args.names):
                print(f"{name}: {paths[name]}")
        elif args.command == "random":
            make_random_weights(args.out, args.tiny, args.names, args.bank_size, progress=True)
            print(f"random {'tiny' if args.tiny else 'full-size'} weights (noise) in {args.out}")
        else:
            if args.dry_run and args.out is None:
                parser.error("--dry-run needs --out")
            manifest = publish(args.repo, e4e=args.e4e, arcface=args.arcface, farl=args.farl,
                               landmarks=args.landmarks, recognition=args.recognition, bank=args.bank,
                               generator=args.generator, bank_size=args.bank_size, device=args.device,
                               out=args.out, dry_run=args.dry_run,
                               private=args.private, manifest_path=args.manifest)
            if args.dry_run:
                print(f"Hub folder written to {args.out} (not uploaded)")
            else:
                print(f"published {args.repo}@{manifest.revision}; pinned manifest written to {args.manifest}: "
                      "commit it")
    except FalcoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
