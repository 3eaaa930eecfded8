"""A run's figures as the paper lays them out: metrics.json, a printed table, and a self-contained report.html
(the runs' settings, the table with its notes, plots as embedded PNGs, a grid of examples: each original beside
its anonymized image at every method and m, and the judges' provenance).

Whenever a judge is a random-noise network, the table, the terminal and the report say so first and loudly: such
figures measure nothing."""

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
from falco.evaluate.judges import RANDOM, random_judges
from falco.evaluate.plots import JUDGE_NAMES, plots, variant_label
from falco.output_files import save_json, write_atomic

METRICS_NAME, REPORT_NAME = "metrics.json", "report.html"
ARCFACE_NOTE = "* ArcFace IR-SE50 is the loss's own judge (the run optimised its cosine): not an independent measure."
# The table's columns each judge file decides (dlib's HOG detector and recogniser are always dlib's real ones).
JUDGE_COLUMNS = {"fid_inception": "FID", "pnet": "Det. MTCNN", "rnet": "Det. MTCNN", "onet": "Det. MTCNN",
                 "facenet_casia": "Re-ID CASIA", "facenet_vgg": "Re-ID VGG", "arcface": "Re-ID ArcFace*",
                 "probe": "Attr. acc."}
SETTING_NAMES = {"method": "method", "margins": "m", "steps": "steps", "lambda_id": "lambda_id",
                 "lambda_attr": "lambda_attr", "fake_k": "fakes (k)", "weights": "weights", "aligned": "aligned"}
WIDE_THUMBNAILS = 3   # an example may be this many times as wide as it is high before it is shrunk further


def margin_label(margin) -> str:
    return "Original" if margin == "original" else ("m = ?" if margin is None else f"m = {margin:g}")


def number_cell(value, digits: int, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def _fid(value) -> str:
    """FID to 2 decimals, as papers print it; a FID below 0.01 (identical sets, random judges) with its digits,
    not as a 0.00 that looks like a perfect result."""
    if value is not None and 0 < value < 0.005:
        return f"{value:.2g}"
    return number_cell(value, 2)


def random_warning(figures: dict) -> str | None:
    """The loud line every output opens with when a judge is noise; None when every judge is a real network."""
    names = random_judges(figures.get("judges"))
    if not names:
        return None
    columns = ", ".join(dict.fromkeys(JUDGE_COLUMNS[n] for n in names if n in JUDGE_COLUMNS))
    return (f"WARNING: RANDOM JUDGES. {', '.join(names)} are random-noise networks (a random weight set's), not the "
            f"published ones: {columns or 'their figures'} measure nothing. Evaluate with the real judges "
            "(no --weights, or a published weight set) for results.")


def _random_columns(figures: dict) -> set[str]:
    return {JUDGE_COLUMNS[n] for n in random_judges(figures.get("judges")) if n in JUDGE_COLUMNS}


def table_rows(figures: dict, paper: Sequence[PaperFigures] = PAPER_CELEBAHQ) -> tuple[list[str], list[list[str]]]:
    """(headings, rows of cells): the originals, each method and m, then the paper's CelebA-HQ rows for reference.
    A column that a random judge decides is headed "(RANDOM)"."""
    features = figures["input"].get("fid_features", 2048)
    rows_in = figures["margins"]
    with_reference = any("fid_reference" in r for r in rows_in)
    noise = _random_columns(figures)
    headings = ["FID" if features == 2048 else f"FID ({features}-d)", *(["FID (ref.)"] if with_reference else []),
                "Det. dlib", "Det. MTCNN", *(f"Re-ID {n}" for n in JUDGE_NAMES.values()), "Attr. acc.", "Landmarks"]
    headings = ["", *(f"{h} (RANDOM)" if h.split(" (")[0] in noise or h in noise else h for h in headings)]
    original = figures["original"]
    rows = [["Original", "-", *(["-"] if with_reference else []),
             number_cell(original["detection_percent"].get("dlib"), 2, " %"),
             number_cell(original["detection_percent"].get("mtcnn"), 2, " %"), *["-"] * len(JUDGE_NAMES),
             number_cell(original["attribute_accuracy"], 4), "-"]]
    for row in rows_in:
        rows.append([variant_label(row.get("method"), row["margin"]), _fid(row["fid"]),
                     *([_fid(row.get("fid_reference"))] if with_reference else []),
                     number_cell(row["detection_percent"].get("dlib"), 2, " %"),
                     number_cell(row["detection_percent"].get("mtcnn"), 2, " %"),
                     *(number_cell(row["reid_percent"].get(judge), 2, " %") for judge in JUDGE_NAMES),
                     number_cell(row["attribute_accuracy"], 4), number_cell(row["landmark_error"], 4)])
    for ref in paper:
        rows.append([f"paper {margin_label(ref.margin)}", number_cell(ref.fid, 2), *(["-"] if with_reference else []),
                     number_cell(ref.detection_dlib, 2, " %"), number_cell(ref.detection_mtcnn, 2, " %"),
                     number_cell(ref.reid_casia, 2, " %"), number_cell(ref.reid_vgg, 2, " %"), "-", "-",
                     number_cell(ref.attribute_accuracy, 4), "-"])
    return headings, rows


def notes(figures: dict) -> list[str]:
    """What a reader needs to weigh the table: the chance level of re-ID, FID's bias on few images, ArcFace."""
    setup = figures["input"]
    rows = figures["margins"]
    out = []
    chance = next((r["reid_chance_percent"] for r in rows if r.get("reid_chance_percent") is not None), None)
    if chance is not None:
        people = setup.get("identities") or setup.get("originals")
        whom = "people" if setup.get("identity_labels") else "originals"
        out.append(f"Re-ID at chance: {chance:.2f} % (a judge blind to faces, picking one of {people} {whom} at "
                   "random); a rate near it means the judge cannot tell who it is.")
    images = sorted({r["images"] for r in rows})
    out.append(f"FID on {setup.get('originals', '?')} originals and {', '.join(map(str, images))} anonymized images a "
               "row is "
               "biased upwards: it falls as images are added (the paper's are on all of CelebA-HQ's 30,000), so it "
               "compares only rows of the same n." + ("" if setup.get("fid_features", 2048) == 2048 else
                                                     f" Its {setup['fid_features']}-d features do not compare with "
                                                     "published FIDs at all."))
    if "fid_reference_images" in setup:
        out.append(f"FID (ref.): each row against the {setup['fid_reference_images']} images of the reference set "
                   "(--fid-reference), as the paper's LFW column FID (C-HQ).")
    return [*out, ARCFACE_NOTE]


def settings_rows(figures: dict) -> list[tuple[str, str]]:
    """(method, its settings in words) per set the records describe: what the figures are figures of."""
    out = []
    for entry in figures.get("settings") or []:
        parts = [f"{SETTING_NAMES.get(k, k)} {', '.join(_setting(v) for v in values)}"
                 for k, values in entry.items() if k != "set" and values]
        out.append((entry.get("set") or "run", "; ".join(parts)))
    return out


def _setting(value) -> str:
    if isinstance(value, list):
        return "[" + " ".join(_setting(v) for v in value) + "]"
    return "none" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def format_table(figures: dict, paper: Sequence[PaperFigures] = PAPER_CELEBAHQ) -> str:
    """The table as text, aligned in columns; the paper's rows (CelebA-HQ) under a rule; the notes under it; a
    warning above and below when a judge is random."""
    headings, rows = table_rows(figures, paper)
    widths = [max(len(cell) for cell in column) for column in zip(headings, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)   # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-" * sum(widths) + "-" * 2 * (len(widths) - 1)
    ours = len(rows) - len(paper)
    out = [line(headings), rule, *map(line, rows[:ours])]
    if paper:
        out += [rule, *map(line, rows[ours:])]
    warning = random_warning(figures)
    loud = [] if warning is None else ["!" * len(rule), warning, "!" * len(rule)]
    return "\n".join([*loud, *out, *notes(figures), *loud])


def write_metrics(figures: dict, out_dir: Path, paper: Sequence[PaperFigures] = PAPER_CELEBAHQ) -> Path:
    payload = {**figures, "random_judges": random_judges(figures.get("judges")),
               "paper_celebahq": [asdict(ref) for ref in paper]}
    return save_json(Path(out_dir) / METRICS_NAME, payload, final_newline=True, default=_json_number)


def _json_number(value):
    return float(value)   # numpy scalars


# --- report.html ------------------------------------------------------------------------------------------------
def write_html(figures: dict, data: EvaluationSet, out_dir: Path, config: EvaluationConfig = EvaluationConfig(),
               paper: Sequence[PaperFigures] = PAPER_CELEBAHQ) -> Path:
    """report.html: the settings, the table, the plots, the example grid and the judges, every picture embedded
    (one file to send)."""
    esc = html.escape
    headings, rows = table_rows(figures, paper)
    table = "<table class='figures'><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headings)
    table += "</tr></thead><tbody>"
    ours = len(rows) - len(paper)
    for i, row in enumerate(rows):
        css = " class='paper'" if i >= ours else ""
        table += f"<tr{css}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
    table += "</tbody></table>"
    pictures = "".join(f"<figure><img alt='{esc(title)}' src='data:image/png;base64,{png}'>"
                       f"<figcaption>{esc(caption)}</figcaption></figure>" for title, caption, png in plots(figures))
    setup = figures["input"]
    facts = (f"{setup['originals']} originals, {setup['anonymized']} anonymized images ({setup['kind']}"
             f"{', aligned crops' if setup['aligned'] else ''}); skipped: "
             f"{', '.join(f'{n} {why}' for why, n in setup['skipped'].items()) or 'none'}; "
             f"originals without a face: {setup['no_face_in_original']}.")
    warning = random_warning(figures)
    banner = "" if warning is None else f"<div class='random' role='alert'><strong>{esc(warning)}</strong></div>"
    settings = settings_rows(figures)
    settings_html = ("<table class='settings'>" + "".join(f"<tr><th>{esc(m)}</th><td>{esc(s)}</td></tr>"
                                                          for m, s in settings) + "</table>") if settings else \
        "<p>The input keeps no records of its runs' settings (plain folders, a dataset).</p>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>FALCO evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1500px; }}
table.figures {{ border-collapse: collapse; margin: 1em 0; }}
table.figures th, table.figures td {{ border-bottom: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }}
table.figures td:first-child, table.figures th:first-child {{ text-align: left; }}
table.figures td {{ white-space: nowrap; }}
table.settings th {{ text-align: left; padding-right: 1em; }}
tr.paper td {{ color: #777; font-style: italic; }}
div.random {{ background: #b00020; color: #fff; padding: 0.8em 1em; font-size: 1.2em; margin: 1em 0; }}
figure {{ display: inline-block; vertical-align: top; margin: 0.5em; width: 520px; }}
figcaption {{ font-size: 0.85em; color: #444; }}
table.examples td, table.examples th {{ padding: 2px 4px; text-align: center; font-size: 0.8em; }}
div.examples {{ overflow-x: auto; }}
table.examples th[scope=row] {{ text-align: right; font-weight: normal; white-space: nowrap; }}
table.judges td {{ padding: 0.1em 0.7em; font-size: 0.85em; }}
</style></head><body>
<h1>FALCO evaluation</h1>
{banner}
<p>{esc(facts)}</p>
<h2>Settings</h2>
{settings_html}
<h2>Figures</h2>
{table}
<ul class='notes'>{''.join(f'<li>{esc(n)}</li>' for n in notes(figures))}</ul>
<p>Rates in %; re-identification: the share of anonymized faces whose nearest original, by each judge, is their own
source (or, with identity labels, the same person). Grey rows: the paper's CelebA-HQ figures, for reference.</p>
<h2>Plots</h2>
<div class="plots">{pictures}</div>
<h2>Examples</h2>
{_example_grid(data, config)}
<h2>Judges</h2>
{_judges_table(figures)}
{banner}
</body></html>
"""
    return write_atomic(Path(out_dir) / REPORT_NAME, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def _judges_table(figures: dict) -> str:
    entries = figures.get("judges") or {}
    if not entries:
        return "<p>No provenance recorded for the judges.</p>"

    def origin(entry: dict) -> str:
        noise = entry.get("origin") == RANDOM
        return "<strong>RANDOM NOISE</strong>" if noise else html.escape(entry.get("origin", ""))

    body = "".join(f"<tr><td>{html.escape(e.get('network', name))}</td><td>{html.escape(e.get('file', ''))}</td>"
                   f"<td><code>{html.escape((e.get('sha256') or '')[:16])}</code></td><td>{origin(e)}</td></tr>"
                   for name, e in entries.items())
    return ("<table class='judges'><thead><tr><th>network</th><th>file</th><th>sha256 (first 16)</th><th>origin</th>"
            f"</tr></thead><tbody>{body}</tbody></table>")


def thumbnail_base64(image: Image.Image, side: int) -> str:
    """A JPEG ``side`` pixels high (a wide photo keeps its width, up to WIDE_THUMBNAILS times ``side``)."""
    image = image.convert("RGB")
    image.thumbnail((side * WIDE_THUMBNAILS, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _example_grid(data: EvaluationSet, config: EvaluationConfig) -> str:
    """The first few originals (key order), each named, beside their anonymized images, one column per method
    and m."""
    variants = data.variants
    by_key = defaultdict(dict)
    for item in data.anonymized:
        by_key[item.key][item.variant] = item
    chosen = [o for o in data.originals if o.key in by_key][:config.examples]
    head = "<th></th><th>Original</th>" + "".join(f"<th>{html.escape(variant_label(*v))}</th>" for v in variants)
    body = ""
    for original in chosen:
        cells = [("Original", original.load()),
                 *((variant_label(*v), by_key[original.key][v].load() if v in by_key[original.key] else None)
                   for v in variants)]
        name = html.escape(original.key)
        body += f"<tr><th scope='row'>{name}</th>" + "".join(
            "<td>-</td>" if image is None else
            f"<td><img alt='{name}, {html.escape(label)}' title='{name}, {html.escape(label)}' "
            f"src='data:image/jpeg;base64,{thumbnail_base64(image, config.example_side)}'></td>"
            for label, image in cells) + "</tr>"
    return (f"<div class='examples'><table class='examples'><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            "</table></div>")
