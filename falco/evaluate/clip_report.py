"""A clip evaluation's figures laid out: metrics.json, a printed table, and a self-contained report.html in the
photo report's look (falco.evaluate.report): the tables overall and per track, plots over the frames, and face
crops of a few frames, the original beside each anonymized clip."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from falco.config import EvaluationConfig
from falco.evaluate.clip_inputs import ClipSet
from falco.evaluate.judges import random_judges
from falco.evaluate.plots import JUDGE_NAMES, png_base64
from falco.evaluate.report import (  # the photo report's names, cells and thumbnails
    ARCFACE_NOTE,
    METRICS_NAME,
    REPORT_NAME,
    margin_label,
    number_cell,
    thumbnail_base64,
)
from falco.output_files import save_json, write_atomic
from falco.video.io import read_frames

# The judge of the table's consistency columns and of the identity plot: FaceNet VGGFace2, the paper's second
# re-ID judge, independent of the run (ArcFace is the loss's own); metrics.json has every judge's.
TABLE_JUDGE = "facenet_vgg"
EXAMPLE_MARGIN = 0.3   # the example crops: the face box grown by this share of its side on every side


def clip_label(row: dict) -> str:
    return f"{margin_label(row['margin'])} ({row['clip']})"


def _worst(consistency: dict | None) -> str:
    if not consistency:
        return "-"
    return f"{consistency['worst']:.3f} @ {consistency['worst_frame']}"


def _consistency(row: dict) -> dict | None:
    return row["consistency"].get(TABLE_JUDGE)


HEADINGS = ["", "Unanon.", *(f"Re-ID {n}" for n in JUDGE_NAMES.values()), "Consist.", "Worst frame", "Landmarks",
            "Flicker", "Flicker x", "Det. dlib", "Det. MTCNN"]


def _cells(label: str, row: dict, original: bool) -> list[str]:
    consistency = _consistency(row)
    detection = row["detection_percent"]
    if original:
        anonymized = ["-"] * (1 + len(JUDGE_NAMES))
    else:
        anonymized = [number_cell(row["unanonymized_percent"], 2, " %"),
                      *(number_cell(row["reid_percent"].get(judge), 2, " %") for judge in JUDGE_NAMES)]
    return [label, *anonymized, number_cell(consistency and consistency["mean"], 3), _worst(consistency),
            "-" if original else number_cell(row["landmark_error"], 4), number_cell(row["flicker"], 2),
            "-" if original else number_cell(row["flicker_ratio"], 2),
            number_cell(detection.get("dlib"), 2, " %"), number_cell(detection.get("mtcnn"), 2, " %")]


def table_rows(figures: dict) -> tuple[list[str], list[list[str]]]:
    """(headings, rows of cells) over every track: the original, then each anonymized clip."""
    rows = [_cells("Original", figures["original"], True)]
    rows += [_cells(clip_label(row), row, False) for row in figures["clips"]]
    return HEADINGS, rows


def track_rows(figures: dict) -> tuple[list[str], list[list[str]]]:
    """(headings, rows of cells) per track: its original frames, then each anonymized clip's."""
    rows = []
    for t, original in enumerate(figures["original"]["tracks"]):
        rows.append(_cells(f"Track {original['track']}: original", original, True))
        rows += [_cells(f"Track {original['track']}: {clip_label(row)}", row["tracks"][t], False)
                 for row in figures["clips"]]
    return HEADINGS, rows


def _text_table(headings: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(headings, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)   # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(headings), "-" * (sum(widths) + 2 * (len(widths) - 1)), *map(line, rows)]


def notes(figures: dict) -> list[str]:
    setup = figures["input"]
    return [f"{setup['original']}: {setup['frames']} frames measured of {setup['clip_frames']}, {setup['tracks']} "
            f"person track(s), {setup['track_frames']} faces ({setup['filled_frames']} in gaps the tracker bridged).",
            f"Consist., Worst frame: {JUDGE_NAMES[TABLE_JUDGE]}'s mean pairwise cosine over a track's frames and its "
            f"least consistent frame; Flicker: mean |frame - previous| in the face box (levels), x: over the "
            f"original's; Unanon.: faces whose box, shrunk to {setup['unchanged_side']} px, is within "
            f"{setup['unchanged_difference']:g} levels of the original's (must be 0).",
            ARCFACE_NOTE]


def random_warning(figures: dict) -> str | None:
    """The loud line a run on random-noise judges opens with (as the photo report's); None with real judges."""
    names = random_judges(figures.get("judges"))
    if not names:
        return None
    return (f"WARNING: RANDOM JUDGES. {', '.join(names)} are random-noise networks (a random weight set's), not the "
            "published ones: the figures that rest on them measure nothing. Evaluate with the real judges (no "
            "--weights, or a published weight set) for results.")


def format_table(figures: dict) -> str:
    """The overall table as text and, with several tracks, the table per track; then what the columns mean; a
    warning above and below when a judge is random."""
    lines = _text_table(*table_rows(figures))
    if figures["input"]["tracks"] > 1:
        lines += ["", *_text_table(*track_rows(figures))]
    warning = random_warning(figures)
    loud = [] if warning is None else ["!" * len(lines[1]), warning, "!" * len(lines[1])]
    return "\n".join([*loud, *lines, *notes(figures), *loud])


def write_metrics(figures: dict, out_dir: Path) -> Path:
    payload = {**figures, "random_judges": random_judges(figures.get("judges"))}
    return save_json(Path(out_dir) / METRICS_NAME, payload, final_newline=True, default=float)


# --- report.html ------------------------------------------------------------------------------------------------
STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table.figures { border-collapse: collapse; margin: 1em 0; }
table.figures th, table.figures td { border-bottom: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
table.figures td { white-space: nowrap; }
table.figures td:first-child, table.figures th:first-child { text-align: left; }
tr.original td { color: #555; }
div.random { background: #b00020; color: #fff; padding: 0.8em 1em; font-size: 1.2em; margin: 1em 0; }
figure { display: inline-block; vertical-align: top; margin: 0.5em; width: 480px; }
figcaption { font-size: 0.85em; color: #444; }
table.examples td, table.examples th { padding: 2px; text-align: center; font-size: 0.8em; }
"""


def _html_table(headings: list[str], rows: list[list[str]]) -> str:
    out = "<table class='figures'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    out += "</tr></thead><tbody>"
    for row in rows:
        css = " class='original'" if row[0].endswith("riginal") else ""
        out += f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
    return out + "</tbody></table>"


def write_html(figures: dict, clips: ClipSet, out_dir: Path, config: EvaluationConfig = EvaluationConfig()) -> Path:
    """report.html: the tables, the plots and face crops of a few frames, every picture embedded (one file)."""
    per_track = _html_table(*track_rows(figures)) if figures["input"]["tracks"] > 1 else ""
    plots = "".join(f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                    for title, caption, png in _plots(figures))
    warning = random_warning(figures)
    banner = "" if warning is None else \
        f"<div class='random' role='alert'><strong>{html.escape(warning)}</strong></div>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>FALCO clip evaluation</title>
<style>{STYLE}</style></head><body>
<h1>FALCO clip evaluation</h1>
{banner}
<p>{html.escape(notes(figures)[0])}</p>
<h2>Figures</h2>
{_html_table(*table_rows(figures))}
{per_track and '<h2>Per track</h2>' + per_track}
<p>Rates in %. Re-identification: the share of a track's anonymized faces that a judge takes for the person (their
nearest original identity, and as near as the person's own least similar frame). {html.escape(notes(figures)[1])}
{html.escape(ARCFACE_NOTE)}</p>
<h2>Plots</h2>
<div class="plots">{plots}</div>
<h2>Examples</h2>
{_examples(figures, clips, config)}
</body></html>
"""
    return write_atomic(Path(out_dir) / REPORT_NAME, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def _series_axes(title: str, ylabel: str):
    from matplotlib.figure import Figure
    figure = Figure(figsize=(4.6, 3.2), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("frame")
    ax.set_ylabel(ylabel)
    ax.ticklabel_format(axis="y", useOffset=False)   # cosines near 1 read as themselves, not "1e-5 + 0.9999"
    return figure, ax


def _plots(figures: dict) -> list[tuple[str, str, str]]:
    """(title, caption: how to read it, base64 PNG) per plot: the frame-by-frame series of every track and clip;
    the detection rates."""
    import matplotlib

    matplotlib.use("Agg")   # files only, no display
    from matplotlib.figure import Figure

    several = figures["input"]["tracks"] > 1
    originals = figures["original"]["tracks"]
    lines = [(clip_label(row) + (f", track {track['track']}" if several else ""), track["per_frame"])
             for row in figures["clips"] for track in row["tracks"]]
    made = []

    def plot(title: str, caption: str, ylabel: str, key, reference=None, level: float | None = None):
        figure, ax = _series_axes(title, ylabel)
        for label, series in lines:
            values = key(series)
            ax.plot(series["frame"], [math.nan if v is None else v for v in values], marker=".", label=label)
        if reference is not None:
            for original in originals:
                values = reference(original["per_frame"])
                ax.plot(original["per_frame"]["frame"], [math.nan if v is None else v for v in values], "--",
                        color="gray", label="original" + (f", track {original['track']}" if several else ""))
        if level is not None:
            ax.axhline(level, linestyle=":", color="red", label="unchanged below")
        ax.legend(fontsize="small")
        made.append((title, caption, png_base64(figure)))

    judge = JUDGE_NAMES[TABLE_JUDGE]
    plot(f"Similarity to the original person ({judge})",
         "Lower is better anonymization: each frame's new face against the person's identity in the original; the "
         "dashed line is the original's own frames (the similarity of a face left as it was).", "cosine",
         lambda s: s["identity_similarity"].get(TABLE_JUDGE, []),
         lambda s: s["identity_similarity"].get(TABLE_JUDGE, []))
    plot("Change from the original in the face box",
         "A frame under the dotted line is a face left as it was (it must have none): mean difference of the face "
         "box, shrunk so that a codec's noise averages out.", "levels", lambda s: s["change"],
         level=figures["input"]["unchanged_difference"])
    plot("Landmark error / inter-ocular distance",
         "Lower keeps more of pose and expression: dlib's 68 landmarks on the new face against the original's, in "
         "frames where dlib finds both.", "error", lambda s: s["landmark_error"])
    plot("Flicker in the face box",
         "Nearer the dashed original is steadier: the mean change of the face box from the frame before; above it, "
         "the new face flickers more than the original moves.", "levels", lambda s: s["flicker"],
         lambda s: s["flicker"])

    figure = Figure(figsize=(4.6, 3.2), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    ax.set_title("Face detection rate (tracked faces)")
    rows = [figures["original"], *figures["clips"]]
    labels = ["Original", *(f"{margin_label(r['margin'])}\n{r['clip']}" for r in figures["clips"])]
    for i, detector in enumerate(("dlib", "mtcnn")):
        ax.bar([p + (i - 0.5) * 0.4 for p in range(len(rows))],
               [math.nan if r["detection_percent"].get(detector) is None else r["detection_percent"][detector]
                for r in rows], 0.4, label=detector)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend()
    made.append(("Face detection rate", "Share of the tracked faces each detector still finds: the original first, "
                 "then each clip.", png_base64(figure)))
    return made


def example_faces(figures: dict, count: int) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """(frame, track, box) of ``count`` faces spread evenly over the tracked faces, in frame order."""
    faces = sorted((frame, track["track"], tuple(box)) for track in figures["original"]["tracks"]
                   for frame, box in zip(track["per_frame"]["frame"], track["per_frame"]["box"]))
    if not faces or count < 1:
        return []
    return [faces[i] for i in sorted({round(x) for x in np.linspace(0, len(faces) - 1, min(count, len(faces)))})]


def _crop(pixels: np.ndarray, box: Sequence[int]) -> Image.Image:
    left, top, right, bottom = box
    grow = EXAMPLE_MARGIN * max(right - left, bottom - top)
    height, width = pixels.shape[:2]
    region = (max(int(left - grow), 0), max(int(top - grow), 0), min(int(right + grow) + 1, width),
              min(int(bottom + grow) + 1, height))
    return Image.fromarray(pixels, "RGB").crop(region)


def _examples(figures: dict, clips: ClipSet, config: EvaluationConfig) -> str:
    """A row per example face: the original's face box (grown) beside the same box of each anonymized clip."""
    chosen = example_faces(figures, config.examples)
    wanted = {frame for frame, _, _ in chosen}
    cells: dict[tuple[int, int], list[str | None]] = {(frame, track): [] for frame, track, _ in chosen}
    for info in (clips.original, *(clip.info for clip in clips.anonymized)):
        frames = {}
        reader = read_frames(info.path)
        try:
            for frame in reader:
                if frame.index in wanted:
                    frames[frame.index] = frame.pixels
                if len(frames) == len(wanted):
                    break
        finally:
            reader.close()
        for frame, track, box in chosen:   # a clip that ends early has no crop there
            cells[(frame, track)].append(thumbnail_base64(_crop(frames[frame], box), config.example_side)
                                         if frame in frames else None)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["", "Original", *(clip_label(row) for row in figures["clips"])])
    body = ""
    for (frame, track), thumbnails in cells.items():
        body += (f"<tr><td>frame {frame}, track {track}</td>" + "".join(
            "<td>-</td>" if t is None else f"<td><img alt='frame {frame}' src='data:image/jpeg;base64,{t}'></td>"
            for t in thumbnails) + "</tr>")
    return f"<table class='examples'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
