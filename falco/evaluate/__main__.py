"""``python -m falco.evaluate ORIGINALS ANONYMIZED [--out report/]``: the paper's measures of a run.

ORIGINALS and ANONYMIZED are two folders with the same relative paths, or the input folder and the output folder
of ``falco anonymize`` (its records give the m values); or ORIGINALS alone is a ``datasets`` dataset (a folder
saved with save_to_disk, or a Hub name) with the original images, ``anonymized``, ``margin`` and ``error``.

Several anonymized sets of the same originals, compared in one table (a row per method and m):
``python -m falco.evaluate ORIGINALS --compare blur=DIR falco=DIR`` (folders), or without ORIGINALS for datasets,
which carry their originals (``--compare blur=DATASET falco=DATASET``).

It prints the table (the paper's CelebA-HQ figures under it) and writes OUT/metrics.json and OUT/report.html; when
any judge is a random-noise network, the terminal, the table and the report say so first.
Clips: ``python -m falco.evaluate --clip ORIGINAL.mp4 ANONYMIZED.mp4 [...] --out DIR`` (falco.evaluate.clip_cli).
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
    top.add_argument("originals", nargs="?", default=None,
                     help="folder of original images, or a dataset (save_to_disk folder or Hub name); omitted with "
                          "--compare of datasets")
    top.add_argument("anonymized", nargs="?", default=None,
                     help="folder of anonymized images (same relative paths) or falco anonymize's output folder; "
                          "omit for a dataset")
    top.add_argument("--compare", nargs="+", metavar="NAME=PATH", default=None,
                     help="several anonymized sets of the same originals, each named: folders (of ORIGINALS) or "
                          "datasets; one table, metrics.json and report")
    top.add_argument("--fid-reference", type=Path, default=None, metavar="DIR",
                     help="a folder of reference images: each row's second FID, against them (the paper's LFW "
                          "column FID (C-HQ))")
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--clip" in argv:   # clips have arguments of their own
        from falco.evaluate.clip_cli import main as clip_main
        return clip_main(argv)
    args = parser().parse_args(argv)
    usage = parser()
    if args.limit is not None and args.limit < 1:
        usage.error("--limit must be at least 1")
    if args.compare is None and args.originals is None:
        usage.error("ORIGINALS is needed (or --compare NAME=DATASET ...)")
    if args.compare is not None:
        if args.anonymized is not None:
            usage.error("--compare names the anonymized sets: give ORIGINALS alone (folders) or nothing (datasets)")
        try:
            args.compare = compared_sets(args.compare)
        except ValueError as err:
            usage.error(str(err))
    datasets = args.anonymized is None if args.compare is None else args.originals is None
    if args.labels is not None and datasets:
        usage.error("--labels is for folders; a dataset's labels are its columns (--identity-column, "
                    "--attribute-columns)")
    check_out(usage, args.out)
    return run(evaluate, args)


def evaluate(args: argparse.Namespace) -> int:
    from falco.evaluate.data import Labels, combine_sets, load_evaluation_set, reference_images
    from falco.evaluate.metrics import Evaluator
    from falco.evaluate.report import format_table, random_warning, write_html, write_metrics

    config = EvaluationConfig(fid_features=args.fid_features)
    labels = Labels(args.identity_column, None if args.attribute_columns is None else tuple(args.attribute_columns),
                    args.labels)

    def load(originals, anonymized):
        return load_evaluation_set(originals, anonymized, labels, args.image_column, args.split, args.margin)

    if args.compare is None:
        data = load(args.originals, args.anonymized)
    elif args.originals is not None:
        data = combine_sets({name: load(args.originals, path) for name, path in args.compare.items()})
    else:
        data = combine_sets({name: load(path, None) for name, path in args.compare.items()})
    data = data.limited(args.limit)
    reference = reference_images(args.fid_reference) if args.fid_reference is not None else ()
    evaluator = Evaluator.from_pretrained(args.weights, args.device, config, progress=not args.no_progress)
    if (warning := random_warning({"judges": evaluator.provenance})) is not None:
        print(warning, file=sys.stderr)   # before the minutes of measuring, and again with the table
    figures = evaluator.evaluate(data, aligned=args.aligned, progress=not args.no_progress, fid_reference=reference)
    write_metrics(figures, output_folder(args.out))
    write_html(figures, data, args.out, config)
    return finish(format_table(figures), args.out)


def compared_sets(pairs: Sequence[str]) -> dict[str, str]:
    """--compare's NAME=PATH pairs, in order; ValueError for a pair without a name or path, or a name twice."""
    named: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise ValueError(f"--compare takes NAME=PATH pairs, not {pair!r}")
        if name in named:
            raise ValueError(f"--compare names {name} twice")
        named[name] = path
    return named


if __name__ == "__main__":
    sys.exit(main())
