"""Origin and licence of every third-party file of a weight set: the one definition.

The Space's page footer and the published model card render these; README.md's Weights
table repeats them by hand (tests/test_licences.py keeps it in step).  The set as
a whole is for non-commercial use: two of its files exclude commercial use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Terms:
    work: str             # what the file is, as a user would name it
    origin: str           # who released it, where
    licence: str          # the licence as its release states it
    url: str              # where those terms are written
    non_commercial: bool  # the terms exclude commercial use


LICENCES: dict[str, Terms] = {
    "generator": Terms("StyleGAN2 FFHQ generator", "NVIDIA, NVlabs/stylegan2", "NVIDIA Source Code License-NC",
                       "https://nvlabs.github.io/stylegan2/license.html", non_commercial=True),
    "dlib_landmarks": Terms("dlib 68-landmark model", "davisking/dlib-models, trained on iBUG 300-W",
                            "iBUG 300-W terms, no commercial use",
                            "https://github.com/davisking/dlib-models#shape_predictor_68_face_landmarksdatbz2",
                            non_commercial=True),
    "e4e": Terms("e4e encoder", "omertov/encoder4editing", "MIT",
                 "https://github.com/omertov/encoder4editing/blob/main/LICENSE", non_commercial=False),
    "arcface": Terms("ArcFace IR-SE50", "TreB1eN/InsightFace_Pytorch", "MIT",
                     "https://github.com/TreB1eN/InsightFace_Pytorch/blob/master/LICENSE", non_commercial=False),
    "farl": Terms("FaRL ViT-B/16", "FacePerceiver/FaRL", "MIT",
                  "https://github.com/FacePerceiver/FaRL/blob/main/LICENSE", non_commercial=False),
    "dlib_recognition": Terms("dlib face recogniser", "davisking/dlib-models", "CC0 1.0 (public domain)",
                              "https://github.com/davisking/dlib-models", non_commercial=False),
}

# The judges the evaluation runs (FaceNet, MTCNN, the FID Inception, the attribute probe): not part of a weight set,
# so neither the footer nor the model card lists them; README "Evaluation networks" repeats them.
EVALUATION_LICENCES: dict[str, Terms] = {
    "facenet": Terms("FaceNet InceptionResnetV1 (CASIA-WebFace, VGGFace2)",
                     "timesler/facenet-pytorch, ported from davidsandberg/facenet", "MIT",
                     "https://github.com/timesler/facenet-pytorch/blob/master/LICENSE.md", non_commercial=False),
    "mtcnn": Terms("MTCNN pnet/rnet/onet", "timesler/facenet-pytorch, ported from davidsandberg/facenet", "MIT",
                   "https://github.com/timesler/facenet-pytorch/blob/master/LICENSE.md", non_commercial=False),
    "fid_inception": Terms("FID InceptionV3 (2015-12-05)", "TensorFlow models, converted by toshas/torch-fidelity",
                           "Apache 2.0", "https://github.com/tensorflow/models/blob/master/LICENSE",
                           non_commercial=False),
    "probe": Terms("open_clip ViT-B/32 laion2b_s34b_b79k", "LAION, laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "MIT",
                   "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K", non_commercial=False),
}


def non_commercial_note() -> str:
    """Why the set as a whole is for non-commercial use, naming the files that make it so."""
    names = " and ".join(f"the {t.work} ({t.licence})" for t in LICENCES.values() if t.non_commercial)
    return f"The set as a whole is for non-commercial use only, because of {names}."


def terms_line(artifact: str) -> str:
    """Markdown: where ``artifact``'s original comes from and under which licence."""
    t = LICENCES[artifact]
    return f"{t.work}, from {t.origin}. Licence: [{t.licence}]({t.url})."


def licence_footer() -> str:
    """One or two lines of Markdown for the page footer: each file, its licence, the whole set's terms."""
    files = " · ".join(f"{t.work} ({t.origin}): [{t.licence}]({t.url})" for t in LICENCES.values())
    return f"<small>**Weights and their licences.** {files}. {non_commercial_note()}</small>"
