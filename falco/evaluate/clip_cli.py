"""``python -m falco.evaluate --clip ORIGINAL ANONYMIZED [ANONYMIZED ...] [--out report/]``: the clip measures.

ORIGINAL is a clip; each ANONYMIZED is an anonymized version of it (one per m: ``falco anonymize``'s clips, the
Video tab's download) or the output folder of ``falco anonymize ORIGINAL OUT`` (its record lists the clips at
every m).  The m of each clip comes from ``--margin``, else from the record beside it, else from its name
(``clip.m0.5.mp4``).  It prints the table and writes OUT/metrics.json and OUT/report.html.
Exit status: 0 done; 1 an error stopped it; 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from falco.config import EvaluationConfig
from falco.evaluate.command import check_out, finish, output_folder, run


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m falco.evaluate", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--clip", action="store_true", required=True, help="evaluate clips (what routes here)")
    top.add_argument("clips", nargs="+", metavar="CLIP",
                     help="the original clip, then its anonymized clips (or falco anonymize's output folder)")
    top.add_argument("--margin", type=float, nargs="+", default=None,
                     help="the m of each anonymized clip, in their order, after the clips (default: their records "
                          "or names)")
    top.add_argument("--out", type=Path, default=Path("report"), help="where metrics.json and report.html go")
    top.add_argument("--weights", default=None, help="Hub repo id[@revision] or local weights folder (ArcFace, "
                                                     "dlib; the judges too when it has them)")
    top.add_argument("--device", default=None, help="e.g. cuda:1 (default: CUDA when available)")
    top.add_argument("--max-frames", type=int, default=None, help="measure the first N frames only")
    top.add_argument("--no-progress", action="store_true")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    usage = parser()
    args = usage.parse_args(argv)
    if len(args.clips) < 2:
        usage.error("give the original clip and at least one anonymized clip (or folder)")
    if args.max_frames is not None and args.max_frames < 1:
        usage.error("--max-frames must be at least 1")
    check_out(usage, args.out)
    return run(evaluate, args)


def evaluate(args: argparse.Namespace) -> int:
    from falco.evaluate.clip_inputs import load_clip_set
    from falco.evaluate.clip_report import format_table, random_warning, write_html, write_metrics
    from falco.evaluate.clips import UNUSED_JUDGES, ClipEvaluator
    from falco.evaluate.metrics import Evaluator

    config = EvaluationConfig()
    clips = load_clip_set(args.clips[0], args.clips[1:], args.margin)
    evaluator = Evaluator.from_pretrained(args.weights, args.device, config, progress=not args.no_progress)
    if (warning := random_warning({"judges": {n: e for n, e in evaluator.provenance.items()
                                              if n not in UNUSED_JUDGES}})) is not None:
        print(warning, file=sys.stderr)   # before the measuring, and again with the table
    figures = ClipEvaluator(evaluator).evaluate(clips, args.max_frames, progress=not args.no_progress)
    write_metrics(figures, output_folder(args.out))
    write_html(figures, clips, args.out, config)
    return finish(format_table(figures), args.out)
