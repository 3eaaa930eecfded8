"""report.html's plots, drawn from metrics.json's figures: PNGs (base64) with a caption that says how to read each.

    re-identification  per judge, against m (lines) or per method (bars), with the chance level
    FID                against the originals (and the --fid-reference set), the axis from 0 without an offset
    attributes         the probe's accuracy, the originals' as the upper bound (only with attribute labels)
    landmarks          the landmark error (only where dlib found anonymized faces)
    detection          dlib's and MTCNN's rates, the originals' first
    privacy / utility  one point per method and m: re-ID rate against attribute accuracy or landmark error
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence

JUDGE_NAMES = {"facenet_casia": "CASIA", "facenet_vgg": "VGG", "arcface": "ArcFace*", "dlib": "dlib"}
# The paper's two columns: the privacy axis of the privacy / utility plot (ArcFace is the loss's own judge).
PRIVACY_JUDGES = ("facenet_casia", "facenet_vgg")
# Several series share an axis: each its own line style and marker, the markers of decreasing size, so that
# series lying on top of each other still show (concentric markers) and none hides another.
STYLES = (("-", "o", 10), ("--", "s", 7.5), ("-.", "^", 5.5), (":", "D", 3.5))
SIZE = (5.2, 3.5)


def variant_label(method: str | None, margin: float | None) -> str:
    """A row's name: the method (in a comparison) and the m."""
    m = None if margin is None else f"m = {margin:g}"
    if method is None:
        return m or "m = ?"
    return method if m is None else f"{method} {m}"


def _value(value) -> float:
    return math.nan if value is None else float(value)


def plots(figures: dict) -> list[tuple[str, str, str]]:
    """(title, caption, base64 PNG) per plot that has something to show."""
    import matplotlib

    matplotlib.use("Agg")   # files only, no display
    rows = figures["margins"]
    labels = [variant_label(r.get("method"), r["margin"]) for r in rows]
    numeric = len({r.get("method") for r in rows}) == 1 and all(r["margin"] is not None for r in rows)
    xs = [r["margin"] for r in rows] if numeric else list(range(len(rows)))
    chance = next((r["reid_chance_percent"] for r in rows if r.get("reid_chance_percent") is not None), None)
    n = figures["input"].get("originals")
    made = []

    def series_plot(title: str, ylabel: str, series: dict[str, list[float]], caption: str,
                    extra: Callable | None = None) -> None:
        figure, ax = _axes(title, ylabel)
        if numeric:
            ax.set_xlabel("m")
            for (name, values), (line, marker, size) in zip(series.items(), STYLES):
                ax.plot(xs, values, linestyle=line, marker=marker, markersize=size, label=name)
        else:
            width = 0.8 / len(series)
            for i, (name, values) in enumerate(series.items()):
                ax.bar([x + (i - (len(series) - 1) / 2) * width for x in xs], values, width, label=name)
            ax.set_xticks(xs, labels, rotation=20 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center")
        if extra is not None:
            extra(ax)
        if len(ax.get_legend_handles_labels()[0]) > 1:   # one series: its title says what it is
            ax.legend(fontsize="small")
        made.append((title, caption, png_base64(figure)))

    def chance_line(ax) -> None:
        ax.set_ylim(0, 105)
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle=":", label=f"chance ({chance:.3g} %)")

    series_plot("Re-identification rate", "% re-identified",
                {name: [_value(r["reid_percent"].get(judge)) for r in rows] for judge, name in JUDGE_NAMES.items()},
                "Lower is better anonymization; " + ("each judge has its own line style and marker, so that lines "
                                                      "lying on each other still show" if numeric else
                                                      "a bar per judge and row of the table")
                + ". Dotted grey: chance, a judge that picks an original at random. ArcFace* is the loss's own "
                "judge, not an independent one.", chance_line)

    fid = {"against the originals": [_value(r["fid"]) for r in rows]}
    if any("fid_reference" in r for r in rows):
        fid["against the reference set"] = [_value(r.get("fid_reference")) for r in rows]
    nearer = "originals' (and the reference set's)" if len(fid) > 1 else "originals'"
    series_plot("FID", "FID", fid, f"Lower: the anonymized images' Inception statistics lie nearer the {nearer}. "
                f"FID on {n} originals is biased upwards "
                "(it falls as images are added): compare it only between rows of the same n.",
                lambda ax: _plain_axis_from_zero(ax))

    original_accuracy = figures["original"].get("attribute_accuracy")
    if any(r["attribute_accuracy"] is not None for r in rows):
        def originals_line(ax) -> None:
            ax.set_ylim(0, 1.05)   # a share of attributes right
            if original_accuracy is not None:
                ax.axhline(original_accuracy, linestyle="--", color="gray", label="originals (upper bound)")
        series_plot("Attribute preservation", "probe accuracy",
                    {"anonymized": [_value(r["attribute_accuracy"]) for r in rows]},
                    "Higher is better: the linear probe trained on the originals predicts the attributes of the "
                    "held-out originals' anonymized images; dashed: its accuracy on those originals themselves.",
                    originals_line)
    if any(r["landmark_error"] is not None for r in rows):
        series_plot("Landmark error", "error / inter-ocular distance",
                    {"anonymized": [_value(r["landmark_error"]) for r in rows]},
                    "Lower is better: how far dlib's 68 landmarks moved (pose and expression kept), over faces dlib "
                    "found on both images.", lambda ax: _plain_axis_from_zero(ax))

    made.append(("Face detection rate", "Share of images in which each detector finds a face: the originals first, "
                 "then each row of the table.", _detection(figures, labels)))
    privacy = _privacy_utility(figures, rows, labels, chance)
    if privacy is not None:
        made.append(privacy)
    return made


def _axes(title: str, ylabel: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, dpi=100, layout="constrained")
    ax = figure.add_subplot()
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return figure, ax


def _plain_axis_from_zero(ax) -> None:
    """A y axis from 0 whose ticks are the values themselves: no offset ("1e-10+4.216e-6") and no multiplier,
    which made a FID of 4e-6 look like a range of values."""
    from matplotlib.ticker import FuncFormatter

    top = ax.get_ylim()[1]
    ax.set_ylim(0, 1.1 * top if top > 0 else 1)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))


def _detection(figures: dict, labels: list[str]) -> str:
    rows = figures["margins"]
    figure, ax = _axes("Face detection rate", "%")
    width = 0.4
    positions = list(range(len(rows) + 1))
    for i, detector in enumerate(("dlib", "mtcnn")):
        values = [_value(figures["original"]["detection_percent"].get(detector)),
                  *(_value(r["detection_percent"].get(detector)) for r in rows)]
        ax.bar([p + (i - 0.5) * width for p in positions], values, width, label=detector)
    ax.set_xticks(positions, ["Original", *labels], rotation=20 if len(rows) > 3 else 0,
                  ha="right" if len(rows) > 3 else "center")
    ax.set_ylim(0, 125)   # room for the legend above the bars
    ax.legend(fontsize="small", loc="upper right", ncol=2)
    return png_base64(figure)


def _privacy_utility(figures: dict, rows: Sequence[dict], labels: list[str],
                     chance: float | None) -> tuple[str, str, str] | None:
    """Re-ID rate (the mean of the paper's two FaceNet judges) against attribute accuracy, or the landmark error
    without attribute labels: one labelled point per row, the originals' for reference."""
    by_attributes = any(r["attribute_accuracy"] is not None for r in rows)
    key, xlabel = (("attribute_accuracy", "attribute accuracy (higher: more kept)") if by_attributes else
                   ("landmark_error", "landmark error (lower: more kept)"))
    points: dict[tuple[float, float], list[str]] = {}   # rows at the same place share one point and one label
    for row, label in zip(rows, labels):
        reid = [row["reid_percent"][j] for j in PRIVACY_JUDGES if row["reid_percent"].get(j) is not None]
        if reid and row[key] is not None:
            points.setdefault((round(row[key], 4), round(sum(reid) / len(reid), 2)), []).append(label)
    if not points:
        return None
    figure, ax = _axes("Privacy against utility", "% re-identified (FaceNet CASIA, VGG)")
    ax.set_xlabel(xlabel)
    for (x, y), names in points.items():
        ax.plot([x], [y], marker="o", linestyle="", color="tab:blue")
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, 4), fontsize="small")
    original = figures["original"].get("attribute_accuracy") if by_attributes else 0.0
    if original is not None:
        ax.plot([original], [100.0], marker="*", markersize=11, linestyle="", color="gray")
        ax.annotate("Original", (original, 100.0), textcoords="offset points", xytext=(5, -10), fontsize="small")
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle=":", label=f"chance ({chance:.3g} %)")
        ax.legend(fontsize="small", loc="center right")
    ax.set_ylim(0, 110)
    if by_attributes:
        ax.set_xlim(-0.03, 1.05)   # a point at 0 whole, not cut by the axis
    else:
        ax.margins(x=0.25)
    caption = ("One point per row of the table: lower is more private, "
               + ("further right keeps more attributes" if by_attributes else "further left keeps pose and expression")
               + "; the originals (star) are fully re-identified by definition.")
    return "Privacy against utility", caption, png_base64(figure)


def png_base64(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
