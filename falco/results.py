"""What a run yields: a StepEvent per optimisation step, then one AnonymizationResult, and its record.

The app and the command line record a result the same way: ``face_records`` for the JSON,
``save_latents`` for the W+ codes.  A clip's results (falco.video.anonymize) record each person the
same way too: ``face_record`` is the part of a record about one anonymized face at one m, and
``LatentsFile`` writes any result's W+ file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image

from falco.config import DLIB_SAME_PERSON_DISTANCE
from falco.output_files import save_tensors


@dataclass(frozen=True)
class StepEvent:
    step: int                          # 1..total_steps
    total_steps: int
    items: list[tuple[int, float]]     # (face index, m) of each batch item, in preview order
    previews: list[Image.Image]        # one per item every `preview_every` steps and at the last; else []
    losses: dict[str, list[float]]     # identity, attribute, total: one value per item
    identity_cosine: list[float]       # ArcFace cosine to the original, per item


@dataclass(frozen=True)
class FaceResult:
    face_index: int                    # index into the photo's detections
    margin: float
    aligned: Image.Image               # the original, FFHQ-aligned
    inversion: Image.Image             # e4e reconstruction
    fake: Image.Image                  # the fake neighbour from the bank
    anonymized: Image.Image
    wplus: torch.Tensor                # [num_ws, D] anonymized W+ (latent_avg included), CPU
    wplus_inversion: torch.Tensor      # [num_ws, D]
    fake_index: int                    # row of the fake bank
    fake_seed: int
    identity_cosine: float             # ArcFace cosine between original and anonymized
    recognizer_distance: float         # dlib distance; >= 0.6 means "another person" to dlib; NaN: no landmarks
                                       # (an aligned input on which dlib found no face)


@dataclass(frozen=True)
class AlignmentCheck:
    """Whether an input given as an FFHQ-aligned crop looks like one (FaceConfig.aligned_max_offset)."""
    looks_aligned: bool
    offset: float | None               # falco.faces.alignment_offset; None: dlib found no face on the crop

    @classmethod
    def from_offset(cls, offset: float | None, max_offset: float) -> AlignmentCheck:
        """The check of a crop ``offset`` away from its face's FFHQ crop (FaceAnalyzer.as_aligned_face)."""
        return cls(False, None) if offset is None else cls(offset <= max_offset, round(offset, 4))


def face_record(face: FaceResult) -> dict:
    """What a record says about one anonymized face at one m (JSON-ready): a photo's faces and a clip's persons
    alike.  ``recognizer_distance`` and ``same_person_for_dlib`` are None where dlib found no landmarks."""
    unknown = math.isnan(face.recognizer_distance)
    return {"margin": face.margin, "identity_cosine": face.identity_cosine,
            "recognizer_distance": None if unknown else face.recognizer_distance,
            "same_person_for_dlib": None if unknown else face.recognizer_distance < DLIB_SAME_PERSON_DISTANCE,
            "fake_index": face.fake_index, "fake_seed": face.fake_seed}


class LatentsFile:
    """A result's W+ codes as one safetensors file: each result lays out its tensors (``latent_tensors``) and says
    what they are (``LATENTS_WHAT``, the file's metadata); the writing is here, once."""
    LATENTS_WHAT: ClassVar[str]

    def latent_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def save_latents(self, path: Path) -> Path:
        """The W+ codes as a safetensors file (``latent_tensors``, described by ``LATENTS_WHAT``)."""
        tensors = {name: value.cpu().contiguous() for name, value in self.latent_tensors().items()}
        return save_tensors(path, tensors, metadata={"what": self.LATENTS_WHAT})


# The "what" of every W+ file written from an AnonymizationResult (the app's download, the CLI's output).
WPLUS_FILE_METADATA = ("FALCO W+ codes (latent_avg included): wplus [faces, margins, rows, dim] anonymized, "
                       "wplus_inversion [faces, rows, dim] e4e; face counts from 1 in detection order")


@dataclass(frozen=True)
class AnonymizationResult(LatentsFile):
    LATENTS_WHAT: ClassVar[str] = WPLUS_FILE_METADATA

    faces: list[FaceResult]            # faces x margins, face-major
    photos: list[Image.Image]          # the photo with every face pasted back, one per margin
    margins: tuple[float, ...]
    params: dict
    alignment: AlignmentCheck | None = None   # aligned inputs only

    @property
    def photo(self) -> Image.Image:
        return self.photos[0]

    def face_records(self) -> list[dict]:
        """One JSON-ready dict per face and m, as the app and the CLI record them.  ``face`` counts from 1
        in detection order (the number the app shows), unlike ``FaceResult.face_index``."""
        return [{"face": r.face_index + 1, **face_record(r)} for r in self.faces]

    def latent_tensors(self) -> dict[str, torch.Tensor]:
        """The W+ codes as a safetensors dict (see WPLUS_FILE_METADATA); ``face`` as in ``face_records``."""
        per_face = self.faces[::len(self.margins)]
        wplus = torch.stack([r.wplus.float() for r in self.faces]).unflatten(0, (len(per_face), len(self.margins)))
        return {"wplus": wplus,
                "wplus_inversion": torch.stack([r.wplus_inversion.float() for r in per_face]),
                "face": torch.tensor([r.face_index + 1 for r in per_face]),
                "margin": torch.tensor(self.margins, dtype=torch.float32),
                "fake_index": torch.tensor([r.fake_index for r in per_face])}
