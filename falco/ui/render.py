"""Pictures and text for the page: numbered faces, preview grids, progress lines, galleries and tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from falco.config import DLIB_SAME_PERSON_DISTANCE
from falco.faces import DetectedFace
from falco.names import anonymized_face_name, face_name, photo_name
from falco.results import AnonymizationResult, FaceResult, StepEvent


def annotate_faces(photo: Image.Image, faces: Sequence[DetectedFace]) -> Image.Image:
    """The photo with each face's crop outline and a numbered tag (grey: not usable)."""
    canvas = photo.copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(photo.size) / 300))
    font = ImageFont.load_default(size=max(14, round(max(photo.size) / 25)))
    for number, face in enumerate(faces, start=1):
        colour = (46, 204, 64) if face.usable else (170, 170, 170)
        quad = [tuple(map(float, p)) for p in face.quad]
        draw.line(quad + quad[:1], fill=colour, width=width)
        # The tag sits inside the crop's foot, not on its top: the page lays its own label over the top-left
        # of the picture, which hid the number of a face near the photo's top edge.
        left, top, right, bottom = draw.textbbox((0, 0), str(number), font=font)
        pad, tag_w, tag_h = width * 2, right - left, bottom - top
        x = min(max(min(p[0] for p in quad) + 2 * pad, pad), canvas.width - tag_w - pad)
        y = min(max(max(p[1] for p in quad) - tag_h - 3 * pad, pad), canvas.height - tag_h - pad)
        draw.rectangle((x - pad, y - pad, x + tag_w + pad, y + tag_h + pad), fill=colour)
        draw.text((x - left, y - top), str(number), fill=(0, 0, 0), font=font)
    return canvas


def face_summary(faces: Sequence[DetectedFace]) -> tuple[list[tuple[str, int]], list[int], str]:
    """(choices, ticked, text) for the face picker; unusable faces are listed with their reason."""
    choices = [(f"Face {i + 1}", i) for i, f in enumerate(faces) if f.usable]
    lines = [f"- Face {i + 1} cannot be anonymized: {f.reason}" for i, f in enumerate(faces) if not f.usable]
    found = f"Found {len(faces)} face{'s' if len(faces) != 1 else ''}, {len(choices)} usable."
    return choices, [value for _, value in choices], "\n".join([found, *lines])


def preview_grid(images: Sequence[Image.Image], tile: int, columns: int,
                 labels: Sequence[str] | None = None) -> Image.Image:
    """The previews in rows of ``columns``, each tile x tile (previews of a small generator are smaller), each
    with its label (e.g. "face 1, m = 0.5") on a dark band along its bottom edge."""
    columns = max(1, min(columns, len(images)))
    grid = Image.new("RGB", (tile * columns, tile * math.ceil(len(images) / columns)))
    draw = ImageDraw.Draw(grid)
    band = max(10, tile // 10)
    font = ImageFont.load_default(size=max(8, band - 4))
    for i, image in enumerate(images):
        x, y = i % columns * tile, i // columns * tile
        grid.paste(image.convert("RGB").resize((tile, tile), Image.BILINEAR), (x, y))
        if labels:
            draw.rectangle((x, y + tile - band, x + tile - 1, y + tile - 1), fill=(20, 20, 20))
            draw.text((x + 3, y + tile - band + 1), labels[i], fill=(255, 255, 255), font=font)
    return grid


def warning(text: str) -> str:
    """A message that something failed, marked by a red dot the page's CSS draws (emoji need a font)."""
    return f'<span class="falco-dot falco-failed"></span> {text}'


def progress_box(text: str) -> str:
    return f'<div id="falco-progress">{text}</div>'


def progress_html(event: StepEvent) -> str:
    """The bar, the step, and each item's identity cosine as a compact table (a row per face and m)."""
    rows = "".join(f"<tr><td>{f + 1}</td><td>{m:g}</td><td>{c:.3f}</td></tr>"
                   for (f, m), c in zip(event.items, event.identity_cosine, strict=True))
    return (f'<div id="falco-progress"><progress value="{event.step}" max="{event.total_steps}" '
            f'style="width:100%"></progress><div>Step <b>{event.step}</b> / {event.total_steps}</div>'
            f'<table class="falco-cosines"><tr><th>face</th><th>m</th><th>identity cosine</th></tr>{rows}</table>'
            "</div>")


def verdict(distance: float) -> str:
    return "same person" if distance < DLIB_SAME_PERSON_DISTANCE else "different person"


def metric_rows(result: AnonymizationResult) -> list[list[Any]]:
    return [[r.face_index + 1, r.margin, round(r.identity_cosine, 4), round(r.recognizer_distance, 4),
             verdict(r.recognizer_distance)] for r in result.faces]


METRIC_HEADERS = ["face", "m", "identity cosine (ArcFace)", "recogniser distance (dlib)", "verdict"]


def face_files(r: FaceResult) -> dict[str, Image.Image]:
    """A face result's images by their download file name: aligned, inversion, fake, anonymized."""
    number = r.face_index + 1
    return {face_name(number, "aligned"): r.aligned, face_name(number, "inversion"): r.inversion,
            face_name(number, "fake"): r.fake, anonymized_face_name(number, r.margin): r.anonymized}


def face_gallery(result: AnonymizationResult, compare: bool = False,
                 folder: Path | None = None) -> list[tuple[Image.Image | str, str]]:
    """Per face: the original aligned (then its e4e inversion and fake neighbour, unless comparing), then
    the anonymized face at each m.  Comparing, a face's images are one row of the gallery.
    ``folder``: where ``write_downloads`` put this result; the gallery then shows those files."""
    items, seen = [], set()
    for r in result.faces:
        name = f"Face {r.face_index + 1}"
        aligned, inversion, fake, anonymized = (str(folder / f) if folder else image
                                                for f, image in face_files(r).items())
        if r.face_index not in seen:
            seen.add(r.face_index)
            items.append((aligned, f"{name}: original"))
            if not compare:
                items += [(inversion, f"{name}: e4e inversion"), (fake, f"{name}: fake neighbour")]
        # Short: a tile is ~140 px wide in a row of six (the page lets captions wrap); the table has every figure.
        caption = (f"m = {r.margin:g}, cosine {r.identity_cosine:.3f}" if compare
                   else f"{name}: anonymized, m = {r.margin:g}")
        items.append((anonymized, caption))
    return items


def margin_plot(result: AnonymizationResult):
    """Per face, the ArcFace identity cosine and dlib's distance against m, with dlib's same-person threshold
    drawn: how far each m moved the identity, as two judges see it.  A matplotlib Figure (for gr.Plot)."""
    from matplotlib.figure import Figure  # the Agg canvas: no display, thread-safe per figure

    figure = Figure(figsize=(6, 3.2), layout="constrained")
    cosine_axes, distance_axes = figure.subplots(1, 2, sharex=True)
    for face in sorted({r.face_index for r in result.faces}):
        rows = sorted((r for r in result.faces if r.face_index == face), key=lambda r: r.margin)
        margins = [r.margin for r in rows]
        cosine_axes.plot(margins, [r.identity_cosine for r in rows], marker="o", label=f"face {face + 1}")
        distance_axes.plot(margins, [r.recognizer_distance for r in rows], marker="o", label=f"face {face + 1}")
    distance_axes.axhline(DLIB_SAME_PERSON_DISTANCE, color="grey", linestyle="--",
                          label=f"same person below {DLIB_SAME_PERSON_DISTANCE:g}")
    cosine_axes.set(xlabel="m", ylabel="identity cosine (ArcFace)")
    distance_axes.set(xlabel="m", ylabel="recogniser distance (dlib)")
    distance_axes.legend(fontsize="small")
    return figure


@dataclass(frozen=True)
class ComparedFace:
    number: int                        # as the page numbers faces, from 1
    aligned: str                       # the original crop's file
    anonymized: dict[float, str]       # m -> the anonymized crop's file
    cosine: dict[float, float]
    distance: dict[float, float]


PHOTO_VIEW = "Photo"   # the before/after slider's choice of the whole photo; faces are "Face 1", "Face 2", ...


@dataclass(frozen=True)
class Comparison:
    """A run's result as the page browses it: the files written for the visitor, by m (the m slider moves
    between them after Compare m), and the original photo's, for the before/after slider."""
    margins: tuple[float, ...]
    photos: dict[float, str]
    faces: tuple[ComparedFace, ...]
    original: str

    @classmethod
    def of(cls, result: AnonymizationResult, folder: Path, original: str) -> Comparison:
        faces = []
        for number in sorted({r.face_index + 1 for r in result.faces}):
            rows = [r for r in result.faces if r.face_index + 1 == number]
            faces.append(ComparedFace(number, str(folder / face_name(number, "aligned")),
                                      {r.margin: str(folder / anonymized_face_name(number, r.margin)) for r in rows},
                                      {r.margin: r.identity_cosine for r in rows},
                                      {r.margin: r.recognizer_distance for r in rows}))
        return cls(tuple(result.margins), {m: str(folder / photo_name(m)) for m in result.margins},
                   tuple(faces), original)

    @property
    def views(self) -> list[str]:
        """What the before/after slider can show: the photo, then each face."""
        return [PHOTO_VIEW, *(f"Face {face.number}" for face in self.faces)]

    def nearest(self, wanted: float) -> float:
        return min(self.margins, key=lambda m: (abs(m - wanted), m))

    def _at(self, wanted: float) -> tuple[float, str]:
        m = self.nearest(wanted)
        if m == wanted or len(self.margins) == 1:
            return m, f"m = {m:g}"
        return m, f"m = {m:g} (the computed m nearest to {wanted:g})"

    def before_after(self, wanted: float, shown: str | None) -> tuple[tuple[str, str], str]:
        """(original, anonymized) files of the photo or of face ``shown`` ("Face 2") at the computed m nearest to
        ``wanted``, and their label."""
        m, at = self._at(wanted)
        for face in self.faces:
            if shown == f"Face {face.number}":
                return (face.aligned, face.anonymized[m]), f"Face {face.number}: original | anonymized, {at}"
        return (self.original, self.photos[m]), f"Photo: original | anonymized, {at}"

    def view(self, wanted: float) -> tuple[str, str, list[tuple[str, str]], list[list[Any]]]:
        """(photo, its label, gallery items, metric rows) at the computed m nearest to ``wanted``."""
        m, at = self._at(wanted)
        label = f"Anonymized photo, {at}"
        items, rows = [], []
        for face in self.faces:
            cosine, distance = face.cosine[m], face.distance[m]
            items += [(face.aligned, f"Face {face.number}: original"),
                      (face.anonymized[m], f"Face {face.number}, m = {m:g}: cosine {cosine:.3f}, {verdict(distance)}")]
            rows.append([face.number, m, round(cosine, 4), round(distance, 4), verdict(distance)])
        return self.photos[m], label, items, rows
