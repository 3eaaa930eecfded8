"""Per-visitor sessions and their files.

A visitor's values live in the page's components and in a ``gr.State`` (``Session``); every
file the page shows them is written in the session's own folder inside Gradio's cache (Gradio
serves files there as they are, so no other session shares them), and the folder goes when the
session ends.  Uploads are the exception: Gradio names them by content, so two visitors with the
same photo share one file, which ``SharedFiles`` deletes when the last holder lets go.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from falco.errors import FalcoError
from falco.faces import DetectedFace, load_photo
from falco.output_files import save_image
from falco.ui.messages import PHOTO_GONE
from falco.ui.render import Comparison


def read_photo(path: str) -> Image.Image:
    """The uploaded photo at ``path``; gone from the server (its session ended): a FalcoError that shows no path."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise FalcoError(PHOTO_GONE) from None
    return load_photo(data)


class SharedFiles:
    """Files that several holders may use at once, deleted when the last one lets go.

    Gradio stores an upload at a path named by its content, so two visitors (or one who
    reloaded the page) who upload the same photo get the same file."""

    def __init__(self):
        self._lock = threading.Lock()
        self._holders: Counter[str] = Counter()

    def hold(self, path: str) -> None:
        with self._lock:
            self._holders[path] += 1

    def release(self, path: str, delete: bool = True) -> None:
        """Lets go of ``path``; the last holder deletes it, unless ``delete`` is False (someone not counted here,
        such as a queued API call, still needs it)."""
        with self._lock:
            self._holders[path] -= 1
            if self._holders[path] > 0:
                return
            del self._holders[path]
            if delete:
                Path(path).unlink(missing_ok=True)


UPLOADS = SharedFiles()   # one per process, as Gradio's cache is


@dataclass
class Session:
    """One visitor's state: the photo shown and its faces (so a run does not detect them
    again), the uploads it holds, and its folder of every file the page shows it.  All of
    them go when the session ends."""
    photo: str | None = None
    detections: list[DetectedFace] | None = None
    uploads: set[str] = field(default_factory=set)
    folder: str | None = None      # inside Gradio's cache, made at the first file
    made: int = 0                  # subfolders made, to name the next
    stops: int = 0                 # Stop clicks: a run stops once this differs from its count when it was asked for
    stops_at_request: int | None = None   # ``stops`` when Run or Compare m was last clicked (the run may wait)
    last_step: int = 0             # the last step the current run showed
    asked_at: float | None = None  # time.monotonic() of the click whose run has not started yet
    shown: Comparison | None = None   # the last run's results: the m slider browses several m, the before/after
    original: tuple[str, str] | None = None   # (photo path, the photo as read saved for the before/after slider)

    def detections_for(self, photo_path: str | None) -> list[DetectedFace] | None:
        return self.detections if photo_path is not None and photo_path == self.photo else None

    def hold(self, upload: str) -> None:
        if upload not in self.uploads:
            UPLOADS.hold(upload)
            self.uploads.add(upload)

    def new_folder(self, cache: Path, kind: str) -> Path:
        """A new subfolder for one photo's or one run's files."""
        if self.folder is None:
            cache.mkdir(parents=True, exist_ok=True)
            self.folder = tempfile.mkdtemp(prefix="falco-session-", dir=cache)
        self.made += 1
        folder = Path(self.folder) / f"{kind}-{self.made}"
        folder.mkdir()
        return folder

    def ask_run(self) -> None:
        """A Run (or a clip's run) was clicked: a Stop from now on ends the run, even while it waits in line."""
        self.stops_at_request = self.stops

    def stops_for_run(self) -> int:
        """The Stop count a starting run compares with: the one at its click, else now (one stop per click)."""
        stops = self.stops if self.stops_at_request is None else self.stops_at_request
        self.stops_at_request = None
        return stops

    def original_file(self, photo_path: str, photo: Image.Image, cache: Path) -> str:
        """The photo as read (EXIF-turned), for the before/after slider: saved once per photo, not once per run
        (a large photo's PNG takes a second or two, as long as a GPU run)."""
        if self.original is None or self.original[0] != photo_path or not Path(self.original[1]).exists():
            folder = self.new_folder(cache, "original")
            self.drop_others(folder)
            self.original = (photo_path, str(save_image(photo, folder / "original.png")))
        return self.original[1]

    def drop_others(self, keep: Path) -> None:
        """Removes the subfolders of keep's kind but keep: what the page no longer shows."""
        kind = keep.name.split("-")[0]
        for folder in keep.parent.glob(f"{kind}-*"):
            if folder != keep:
                shutil.rmtree(folder, ignore_errors=True)

    def forget(self) -> None:
        for upload in self.uploads:
            UPLOADS.release(upload)
        self.uploads.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def end_session(session: Session | None) -> None:
    if session is not None:
        session.forget()
