"""A run's figures as the paper lays them out: metrics.json, a printed table, and a self-contained report.html
(plots as embedded PNGs, a grid of examples: each original beside its anonymized image at every m)."""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from falco.config import PAPER_CELEBAHQ, EvaluationConfig, PaperFigures
from falco.evaluate.data import EvaluationSet
from falco.output_files import save_json, write_atomic

METRICS_NAME, REPORT_NAME = "metrics.json", "report.html"
# The identity judges' headings.  ArcFace is starred: the loss optimised its cosine, so it is no independent judge.
JUDGE_NAMES = {"facenet_casia": "CASIA", "facenet_vgg": "VGG", "arcface": "ArcFace*", "dlib": "dlib"}
ARCFACE_NOTE = "* ArcFace IR-SE50 is the loss's own judge (the run optimised its cosine): not an independent measure."


def margin_label(margin) -> str:
    return "Original" if margin == "original" else ("m = ?" if margin is None else f"m = {margin:g}")


def _number(value, digits: int, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def table_rows(figures: dict, paper: Sequence[PaperFigures] = PAPER_CELEBAHQ) -> tuple[list[str], list[list[str]]]:
    """(headings, rows of cells): the originals, each m, then the paper's CelebA-HQ rows for reference."""
    features = figures["input"].get("fid_features", 2048)
    headings = ["", "FID" if features == 2048 else f"FID ({features}-d)", "Det. dlib", "Det. MTCNN",
                *(f"Re-ID {n}" for n in JUDGE_NAMES.values()), "Attr. acc.", "Landmarks"]
    original = figures["original"]
    rows = [["Original", "-", _number(original["detection_percent"].get("dlib"), 2, " %"),
             _number(original["detection_percent"].get("mtcnn"), 2, " %"), *["-"] * len(JUDGE_NAMES),
             _number(original["attribute_accuracy"], 4), "-"]]
    for row in figures["margins"]:
        rows.append([margin_label(row["margin"]), _number(row["fid"], 2),
                     _number(row["detection_percent"].get("dlib"), 2, " %"),
                     _number(row["detection_percent"].get("mtcnn"), 2, " %"),
                     *(_number(row["reid_percent"].get(judge), 2, " %") for judge in JUDGE_NAMES),
                     _number(row["attribute_accuracy"], 4), _number(row["landmark_error"], 4)])
    for ref in paper:
        rows.append([f"paper {margin_label(ref.margin)}", _number(ref.fid, 2), _number(ref.detection_dlib, 2, " %"),
                     _number(ref.detection_mtcnn, 2, " %"), _number(ref.reid_casia, 2, " %"),
                     _number(ref.reid_vgg, 2, " %"), "-", "-", _number(ref.attribute_accuracy, 4), "-"])
    return headings, rows


def format_table(figures: dict, paper: Sequence[PaperFigures] = PAPER_CELEBAHQ) -> str:
    """The table as text, aligned in columns; the paper's rows (CelebA-HQ) under a rule."""
    headings, rows = table_rows(figures, paper)
    widths = [max(len(cell) for cell in column) for column in zip(headings, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)   # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    ours = len(rows) - len(paper)
    out = [line(headings), "-" * sum(widths) + "-" * 2 * (len(widths) - 1), *map(line, rows[:ours])]
    if paper:
        out += ["-" * sum(widths) + "-" * 2 * (len(widths) - 1), *map(line, rows[ours:])]
    return "\n".join([*out, ARCFACE_NOTE])


def write_metrics(figures: dict, out_dir: Path, paper: Sequence[PaperFigures] = PAPER_CELEBAHQ) -> Path:
    payload = {**figures, "paper_celebahq": [asdict(ref) for ref in paper]}
    return save_json(Path(out_dir) / METRICS_NAME, payload, final_newline=True, default=_json_number)


def _json_number(value):
    return float(value)   # numpy scalars


# --- report.html ------------------------------------------------------------------------------------------------
def write_html(figures: dict, data: EvaluationSet, out_dir: Path, config: EvaluationConfig = EvaluationConfig(),
               paper: Sequence[PaperFigures] = PAPER_CELEBAHQ) -> Path:
    """report.html: the table, the plots and the example grid, every picture embedded (one file to send)."""
    headings, rows = table_rows(figures, paper)
    table = "<table class='figures'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    table += "</tr></thead><tbody>"
    ours = len(rows) - len(paper)
    for i, row in enumerate(rows):
        css = " class='paper'" if i >= ours else ""
        table += f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
    table += "</tbody></table>"
    plots = "".join(f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
                    f"<figcaption>{html.escape(title)}</figcaption></figure>" for title, png in _plots(figures))
    setup = figures["input"]
    facts = (f"{setup['originals']} originals, {setup['anonymized']} anonymized images ({setup['kind']}"
             f"{', aligned crops' if setup['aligned'] else ''}); skipped: "
             f"{', '.join(f'{n} {why}' for why, n in setup['skipped'].items()) or 'none'}; "
             f"originals without a face: {setup['no_face_in_original']}.")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>FALCO evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table.figures {{ border-collapse: collapse; margin: 1em 0; }}
table.figures th, table.figures td {{ border-bottom: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }}
table.figures td:first-child, table.figures th:first-child {{ text-align: left; }}
tr.paper td {{ color: #777; font-style: italic; }}
figure {{ display: inline-block; margin: 0.5em; }}
table.examples td {{ padding: 2px; text-align: center; font-size: 0.8em; }}
</style></head><body>
<h1>FALCO evaluation</h1>
<p>{html.escape(facts)}</p>
<h2>Figures</h2>
{table}
<p>Rates in %; re-identification: the share of anonymized faces whose nearest original, by each judge, is their own
source (or, with identity labels, the same person). Grey rows: the paper's CelebA-HQ figures, for reference.
{html.escape(ARCFACE_NOTE)}</p>
<h2>Plots</h2>
<div class="plots">{plots}</div>
<h2>Examples</h2>
{_example_grid(data, config)}
</body></html>
"""
    return write_atomic(Path(out_dir) / REPORT_NAME, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def _plots(figures: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) per plot: re-ID, FID and attribute accuracy against m; detection rates."""
    import matplotlib

    matplotlib.use("Agg")   # files only, no display
    from matplotlib.figure import Figure

    rows = figures["margins"]
    margins = [r["margin"] for r in rows]
    numeric = all(m is not None for m in margins)
    xs = margins if numeric else list(range(len(rows)))
    ticks = [margin_label(m) for m in margins]

    def axes(title: str, ylabel: str):
        figure = Figure(figsize=(4.6, 3.2), dpi=100, layout="constrained")
        ax = figure.add_subplot()
        ax.set_title(title)
        ax.set_xlabel("m")
        ax.set_ylabel(ylabel)
        if not numeric:
            ax.set_xticks(xs, ticks)
        return figure, ax

    made = []
    figure, ax = axes("Re-identification rate", "%")
    series = defaultdict(list)
    for row in rows:
        for judge, name in JUDGE_NAMES.items():
            series[name].append(row["reid_percent"].get(judge, math.nan))
    for name, values in series.items():
        ax.plot(xs, values, marker="o", label=name)
    ax.legend()
    made.append(("Re-identification rate against m", _png(figure)))

    figure, ax = axes("FID against the originals", "FID")
    ax.plot(xs, [math.nan if r["fid"] is None else r["fid"] for r in rows], marker="o")
    made.append(("FID against m", _png(figure)))

    figure, ax = axes("Attribute preservation", "probe accuracy")
    ax.plot(xs, [math.nan if r["attribute_accuracy"] is None else r["attribute_accuracy"] for r in rows],
            marker="o", label="anonymized")
    if figures["original"]["attribute_accuracy"] is not None:
        ax.axhline(figures["original"]["attribute_accuracy"], linestyle="--", color="gray", label="originals")
    ax.legend()
    made.append(("Attribute accuracy against m", _png(figure)))

    figure, ax = axes("Face detection rate", "%")
    width = 0.8 / 2
    positions = list(range(len(rows) + 1))
    labels = ["Original", *ticks]
    for i, detector in enumerate(("dlib", "mtcnn")):
        values = [figures["original"]["detection_percent"].get(detector, math.nan),
                  *(r["detection_percent"].get(detector, math.nan) for r in rows)]
        ax.bar([p + (i - 0.5) * width for p in positions], values, width, label=detector)
    ax.set_xticks(positions, labels)
    ax.set_xlabel("")
    ax.set_ylim(0, 105)
    ax.legend()
    made.append(("Detection rates", _png(figure)))
    return made


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _thumbnail(image: Image.Image, side: int) -> str:
    image = image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _example_grid(data: EvaluationSet, config: EvaluationConfig) -> str:
    """The first few originals (key order) beside their anonymized images, one column per m."""
    margins = data.margins
    by_key = defaultdict(dict)
    for item in data.anonymized:
        by_key[item.key][item.margin] = item
    chosen = [o for o in data.originals if o.key in by_key][:config.examples]
    head = "".join(f"<th>{html.escape(margin_label(m))}</th>" for m in ["original", *margins])
    body = ""
    for original in chosen:
        cells = [original.load(), *(by_key[original.key][m].load() if m in by_key[original.key] else None
                                    for m in margins)]
        body += "<tr>" + "".join(
            "<td>-</td>" if image is None else
            f"<td><img alt='{html.escape(original.key)}' src='data:image/jpeg;base64,"
            f"{_thumbnail(image, config.example_side)}'></td>" for image in cells) + "</tr>"
    return f"<table class='examples'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
