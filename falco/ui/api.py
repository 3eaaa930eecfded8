"""The named API endpoint, /anonymize: its inputs and outputs (the schema clients read), and its handler
with the rules for the photo a caller sends.

The endpoint runs in the page's GPU line and with its defaults (falco.ui.handlers); a caller's
upload is deleted once its last call is done (falco.ui.sessions.UPLOADS), unless a page session
shows it too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import ImageData
from pydantic import ValidationError, model_validator

from falco.errors import FalcoError
from falco.results import AnonymizationResult
from falco.ui.downloads import run_record, write_downloads
from falco.ui.form import RunForm, parse_faces, settings_from_form
from falco.ui.handlers import PageHandlers, as_gr_error
from falco.ui.messages import PHOTO_NOT_UPLOADED
from falco.ui.queue_state import api_calls_with
from falco.ui.render import face_gallery
from falco.ui.sessions import UPLOADS

API_NAME = "anonymize"


class AnyPhotoRecord(ImageData):
    """Gradio's image file record, validated as ever, except that a value that is not one ("abc", 5) passes as an
    empty record instead of failing with pydantic's message: api_anonymize then answers it in the page's words."""

    @model_validator(mode="wrap")
    @classmethod
    def _anything(cls, value: Any, validate: Any) -> Any:
        try:
            return validate(value)
        except ValidationError:
            return cls.model_construct(path=None)


def api_photo_input() -> gr.Image:
    """The API's photo input, left to api_anonymize to check: whatever a caller sends reaches it as sent.

    Gradio checks and copies an input's files before any handler runs, refusing a path outside its cache in words
    that name server paths; with a proxy URL (the attribute of apps loaded from other apps) it leaves the file record
    as sent, and the proxy serves nothing (Gradio's /proxy route serves only the hosts of the apps it loaded).  Its
    check of the record's shape is made lenient (AnyPhotoRecord); the schema clients read stays Gradio's.
    """
    photo = gr.Image(type="filepath", label="photo")
    photo.proxy_url = "http://unprocessed.invalid"
    photo.data_model = AnyPhotoRecord
    return photo


def _inode(path: str) -> int | None:
    try:
        return Path(path).stat().st_ino
    except OSError:
        return None


class ApiEndpoint:
    """The handler of /anonymize, over the page's handlers: their GPU line, defaults and upload rules."""

    def __init__(self, app: PageHandlers):
        self.app = app

    def api_anonymize(self, photo: Any, faces: Any, margins: Any, steps: Any, lr: Any, lambda_id: Any,
                      lambda_attr: Any, seed: Any, another_fake: Any):
        """Anonymize the faces of a photo.

        faces: "all" or face numbers ("1,3"; usable faces first, largest first); margins: one
        or more m in [0, 1] separated by commas (several run as one batch); steps 0 uses the
        server's default.  Returns the photo with the faces pasted back (at the first m),
        the per-face images (original, e4e inversion, fake, anonymized at each m), a JSON
        record (parameters, identity cosine and recogniser distance per face and m) and the
        files to download (every image, the W+ codes, the record).
        """
        # Unprocessed values (see build): no check of Gradio's can fail before this handler owns the upload, so
        # the upload goes in every outcome, and every bad value gets the page's words.
        app = self.app
        try:
            path = self._photo(photo)
        except FalcoError as err:
            raise as_gr_error(err) from err
        owned = app.deletable(path)
        if owned:   # a page session showing the same file holds it too
            UPLOADS.hold(path)
            seen = _inode(path)
        try:
            try:
                form = RunForm(path, parse_faces(faces), margins, steps, lr, lambda_id, lambda_attr, seed, another_fake)
                settings = settings_from_form(form, app.default_optim, app.config.max_margins, app.config.max_steps)
            except FalcoError as err:
                raise as_gr_error(err) from err
            for event in app.stream(app.read(path), settings):
                if isinstance(event, AnonymizationResult):
                    record = run_record(event)
                    with tempfile.TemporaryDirectory(prefix="falco-api-") as folder:
                        # Gradio copies the files into its cache before it resumes this generator.
                        yield event.photo, face_gallery(event), record, write_downloads(event, record, Path(folder))
        finally:
            if owned:
                # Gradio names an upload by its content: calls queued with the same photo use this file after this
                # one, and a file uploaded again since (a new inode) belongs to that upload's call.
                UPLOADS.release(path, delete=api_calls_with(app.demo, API_NAME, path) <= 1
                                and _inode(path) == seen)

    def _photo(self, payload: Any) -> str:
        """The path of an API call's photo (Gradio's file record): one in Gradio's cache, or a FalcoError that
        names no server path."""
        if payload is None:
            raise FalcoError("Upload a photo first.")
        path = payload.get("path") if isinstance(payload, dict) else None
        if not isinstance(path, str) or not Path(path).is_absolute() or not (
                Path(path).resolve().is_relative_to(self.app.cache.resolve())):
            raise FalcoError(PHOTO_NOT_UPLOADED)
        return path

    def build(self) -> None:
        """The endpoint's own inputs and outputs, hidden on the page, and its event; inside the page's Blocks."""
        optim = self.app.default_optim
        with gr.Column(visible=False):
            inputs = [api_photo_input(), gr.Textbox("all", label="faces"),
                      gr.Textbox("0", label="margins"), gr.Number(0, label="steps", precision=0),
                      gr.Number(optim.lr, label="lr"), gr.Number(optim.lambda_id, label="lambda_id"),
                      gr.Number(optim.lambda_attr, label="lambda_attr"),
                      gr.Number(optim.seed, label="seed", precision=0),
                      gr.Checkbox(False, label="another_fake")]
            outputs = [gr.Image(label="photo", format="png"), gr.Gallery(label="faces", format="png"),
                       gr.JSON(label="record"), gr.File(label="files", file_count="multiple")]
            button = gr.Button()
        button.click(self.api_anonymize, inputs=inputs, outputs=outputs, api_name=API_NAME, concurrency_id="gpu",
                     preprocess=False)
