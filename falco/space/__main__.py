"""FALCO Space: deploy the app as a Hugging Face Space, or check a deployed one (README "Deploy as a Space").

    python -m falco.space deploy --space user/name [--hardware H] [--private] [--weights REPO[@REV]|none]
                                 [--storage user/bucket] [--dry-run --out DIR]
    python -m falco.space check user/name|URL [--steps N] [--margins "0, 0.5"] [--timeout S]

Exit status: 0 done, 1 a step failed (one line on stderr says which and why), 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from falco.config import DEFAULT_PERSISTENT_ROOT, SpaceConfig
from falco.errors import FalcoError


def main(argv: list[str] | None = None) -> int:
    defaults = SpaceConfig()
    parser = argparse.ArgumentParser(prog="python -m falco.space", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    dep = sub.add_parser("deploy", help="create or update the Space and upload the app")
    dep.add_argument("--space", required=True, help="the Space's id (user/name)")
    dep.add_argument("--hardware", default=None,
                     help="cpu-basic, zero-a10g (ZeroGPU), t4-small, l4x1, a10g-small, ... (default: a new Space "
                          "gets cpu-basic, an existing one keeps its own)")
    dep.add_argument("--private", action="store_true", help="a private Space (only a new one)")
    dep.add_argument("--weights", default=None,
                     help="the published weight set the Space loads (user/name[@revision]), set as the Space's "
                          "FALCO_WEIGHTS_REPO; 'none' removes it (default: leave the variable as it is)")
    dep.add_argument("--storage", default=None,
                     help=f"a storage bucket (user/name, created if missing) mounted at {DEFAULT_PERSISTENT_ROOT}: "
                          "prepared weights and the bank survive restarts")
    dep.add_argument("--dry-run", action="store_true", help="only write the Space's folder (needs --out)")
    dep.add_argument("--out", type=Path, default=None, help="write the Space's folder here (a new or empty folder)")

    chk = sub.add_parser("check", help="wait for a deployed Space to run, then try it as a visitor")
    chk.add_argument("target", help="a Space id (user/name) or a URL (the Space's page, its *.hf.space host, "
                                    "http://127.0.0.1:7860)")
    chk.add_argument("--steps", type=int, default=defaults.check_steps,
                     help=f"optimisation steps of the example run (default {defaults.check_steps}; 0: the Space's)")
    chk.add_argument("--margins", default=defaults.check_margins, help="m values of the example run")
    chk.add_argument("--timeout", type=float, default=None,
                     help=f"seconds to wait for the Space to run and again for its models "
                          f"(default {defaults.runtime_timeout_s:.0f} and {defaults.ready_timeout_s:.0f})")
    args = parser.parse_args(argv)

    try:
        if args.command == "deploy":
            from falco.space.deploy import deploy, plan_deploy
            if args.dry_run and args.out is None:
                parser.error("--dry-run needs --out DIR")
            plan = plan_deploy(args.space, hardware=args.hardware, private=args.private, weights=args.weights,
                               storage=args.storage)
            result = deploy(plan, dry_run=args.dry_run, out=args.out)
            if args.dry_run:
                print(f"Space folder written to {result.folder} ({len(result.files)} files; not uploaded). "
                      f"Try it: cd {result.folder} && pip install -r requirements.txt && python app.py")
            else:
                print(f"deployed {plan.space_id}: {result.url}")
                print(f"check it once it has built: python -m falco.space check {plan.space_id}")
        else:
            from falco.space.check import check
            config = defaults if args.timeout is None else replace(
                defaults, runtime_timeout_s=args.timeout, ready_timeout_s=args.timeout)
            check(args.target, steps=args.steps, margins=args.margins, config=config)
            print("ok: the Space works")
    except FalcoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
