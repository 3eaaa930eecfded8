"""The evaluation networks ("judges"), fetched from their public sources at first use, verified, loaded once.

Interface first (bodies in progress): see fetch_evaluation_weights and load_judges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image


class ProbeEncoder(Protocol):
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, D] float32 embeddings, L2-normalised, on the CPU."""


@dataclass(frozen=True)
class EvaluationPaths:
    """Local, verified copy of each evaluation file."""
    source: str                       # "public sources" or the weights folder they came from
    facenet_casia: Path               # 20180408-102900-casia-webface.pt (state dict, logits of 10575 classes)
    facenet_vgg: Path                 # 20180402-114759-vggface2.pt (state dict, logits of 8631 classes)
    pnet: Path
    rnet: Path
    onet: Path
    fid_inception: Path               # torch-fidelity's weights-inception-2015-12-05-6726825d.pth layout
    probe_model: str                  # open_clip model name ("ViT-B-32") or "local-dir:<folder>"
    probe_weights: Path | None        # its open_clip_model.safetensors (None: inside the local-dir folder)


@dataclass
class Judges:
    facenet: dict[str, torch.nn.Module]   # "casia", "vgg": falco.evaluate.facenet.InceptionResnetV1, eval mode
    mtcnn: object                         # falco.evaluate.mtcnn.MTCNN: .detect(images) -> list[(k, 5) arrays]
    fid_weights: Path                     # for torchmetrics' FID: feature_extractor_weights_path
    probe_encoder: ProbeEncoder           # not FaRL: an open_clip ViT-B/32 (LAION-2B)
    device: torch.device


def fetch_evaluation_weights(source: str | Path | None = None, progress: bool = True) -> EvaluationPaths:
    """The evaluation files: from a folder made by ``python -m falco.weights random`` (its ``evaluation/``
    subfolder) when ``source`` is one, else from their public sources (downloaded once, verified)."""
    raise NotImplementedError


def load_judges(source: str | Path | None = None, device: str | torch.device = "cpu",
                progress: bool = True) -> Judges:
    """Every judge loaded once, in eval mode, on ``device``."""
    raise NotImplementedError
