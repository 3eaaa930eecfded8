"""``python -m falco.evaluate ORIGINALS ANONYMIZED [--out report/]``: the paper's measures of a run.

ORIGINALS and ANONYMIZED are two folders with the same relative paths, or the input folder and the output folder
of ``falco anonymize`` (its records give the m values); or ORIGINALS alone is a ``datasets`` dataset (a folder
saved with save_to_disk, or a Hub name) with the original images, ``anonymized``, ``margin`` and ``error``.

It prints the table (the paper's CelebA-HQ figures under it) and writes OUT/metrics.json and OUT/report.html.
Exit status: 0 done; 1 an error stopped it; 2 a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from falco.config import EvaluationConfig
from falco.errors import FalcoError


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m falco.evaluate", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("originals", help="folder of original images, or a dataset (save_to_disk folder or Hub name)")
    top.add_argument("anonymized", nargs="?", default=None,
                     help="folder of anonymized images (same relative paths) or falco anonymize's output folder; "
                          "omit for a dataset")
    top.add_argument("--out", type=Path, default=Path("report"), help="where metrics.json and report.html go")
    top.add_argument("--weights", default=None, help="Hub repo id[@revision] or local weights folder (ArcFace, "
                                                     "dlib; the judges too when it has them)")
    top.add_argument("--device", default=None, help="e.g. cuda:1 (default: CUDA when available)")
    top.add_argument("--limit", type=int, default=None, help="evaluate the first N originals only")
    top.add_argument("--aligned", action="store_true",
                     help="the images are FFHQ-aligned face crops (CelebA-HQ, FFHQ): judged whole, not detected")
    top.add_argument("--image-column", default="image", help="a dataset's original image column")
    top.add_argument("--split", default="train", help="a dataset's split")
    top.add_argument("--identity-column", default=None,
                     help="identity labels: re-identified means the nearest original is the same person")
    top.add_argument("--attribute-columns", nargs="+", default=None,
                     help="binary attribute labels for the probe (default: CelebA's 40, when present)")
    top.add_argument("--labels", type=Path, default=None,
                     help="folders' labels: a CSV with the originals' relative paths (column 'path' or the first)")
    top.add_argument("--margin", type=float, default=None, help="the m of two plain folders (for the table)")
    top.add_argument("--fid-features", type=int, choices=(64, 192, 768, 2048), default=EvaluationConfig().fid_features,
                     help="InceptionV3 features for FID: 2048 as published FIDs; fewer for quick checks")
    top.add_argument("--no-progress", action="store_true")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    usage = parser()
    if args.limit is not None and args.limit < 1:
        usage.error("--limit must be at least 1")
    if args.labels is not None and args.anonymized is None:
        usage.error("--labels is for folders; a dataset's labels are its columns (--identity-column, "
                    "--attribute-columns)")
    if args.out.exists() and not args.out.is_dir():
        usage.error(f"--out {args.out} is a file, not a folder")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return evaluate(args)
    except FalcoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def evaluate(args: argparse.Namespace) -> int:
    from falco.evaluate.data import Labels, load_evaluation_set
    from falco.evaluate.metrics import Evaluator
    from falco.evaluate.report import format_table, write_html, write_metrics

    config = EvaluationConfig(fid_features=args.fid_features)
    labels = Labels(args.identity_column, None if args.attribute_columns is None else tuple(args.attribute_columns),
                    args.labels)
    data = load_evaluation_set(args.originals, args.anonymized, labels, args.image_column, args.split,
                               args.margin).limited(args.limit)
    evaluator = Evaluator.from_pretrained(args.weights, args.device, config, progress=not args.no_progress)
    figures = evaluator.evaluate(data, aligned=args.aligned, progress=not args.no_progress)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FalcoError(f"Cannot create the output folder {args.out}: {err.strerror or err}.") from None
    write_metrics(figures, args.out)
    write_html(figures, data, args.out, config)
    print(format_table(figures))
    print(f"\nmetrics.json and report.html written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
