"""The model card (README.md) of a weight set: what each file is, where it comes from, what built it, its terms."""

from __future__ import annotations

from falco.weights.licences import LICENCES, non_commercial_note, terms_line
from falco.weights.manifest import Manifest

# What each file was converted from (the source that served it, where the manifest records one, follows); its
# origin and licence come from falco.weights.licences.
SOURCES = {
    "generator": "StyleGAN2 FFHQ config-f 1024 (Karras et al., CVPR 2020) in rosinality's PyTorch layout: the "
                 "`decoder` of e4e_ffhq_encode.pt or `g_ema` of stylegan2-ffhq-config-f.pt.",
    "e4e": "The encoder of e4e_ffhq_encode.pt (Tov et al., SIGGRAPH 2021).",
    "arcface": "model_ir_se50.pth, as used by pSp and e4e.",
    "farl": "Image tower of FaRL-Base-Patch16-LAIONFace20M-ep64 (Zheng et al., CVPR 2022), released as "
            "FaRL-Base-Patch16-LAIONFace20M-ep64.pth.",
    "dlib_landmarks": "shape_predictor_68_face_landmarks.dat as dlib releases it.",
    "dlib_recognition": "dlib_face_recognition_resnet_model_v1.dat as dlib releases it.",
    "fake_bank": "Truncated (psi 0.7) samples of the generator above with FaRL embeddings, built with "
                 "`python -m falco.cli bank build`.",
}


def _source(manifest: Manifest, name: str) -> str:
    origin = manifest.origin_of(name)
    served = f" Source: {origin.describe()}." if origin else ""
    return f"{SOURCES[name]}{served}" + (f" {terms_line(name)}" if name in LICENCES else "")


def model_card(manifest: Manifest, random_set: bool = False, tiny: bool = False) -> str:
    rows = "\n".join(f"| `{a.filename}` | {a.description} | {a.size} | `{a.sha256}` |"
                     for a in manifest.artifacts.values())
    table = f"| file | content | bytes | sha256 |\n| --- | --- | --- | --- |\n{rows}\n"
    if random_set:
        dlib_terms = "; ".join(f"{LICENCES[n].work}: {LICENCES[n].licence}"
                               for n in ("dlib_landmarks", "dlib_recognition"))
        return ("---\ntags:\n- falco\n- random-weights\n---\n\n"
                f"# FALCO random weights ({'tiny' if tiny else 'full-size'}) - NOISE, NOT A MODEL\n\n"
                "Every network here has random weights made by a fixed seeding rule: its outputs are noise. "
                "The set exists so that tests and offline smoke runs exercise the exact Hub layout of the FALCO "
                "Space (`python -m falco.weights random`). The dlib files are the real dlib models, under their own "
                f"terms: {dlib_terms}. Never use this set to anonymize anything.\n\n" + table)
    sources = "\n".join(f"- `{manifest.artifacts[n].filename}`: {_source(manifest, n)}" for n in manifest.artifacts)
    made_by = manifest.built.describe() if manifest.built else "`python -m falco.weights publish`"
    served = ", and the source that served each official file" if manifest.sources else ""
    return ("---\nlicense: other\ntags:\n- falco\n- face-anonymization\n- stylegan2\n---\n\n"
            "# FALCO Space weights\n\n"
            "The networks of the FALCO face anonymization Space (Barattin et al., \"Attribute-preserving Face "
            "Dataset Anonymization via Latent Code Optimization\", CVPR 2023), converted from their official "
            f"releases to safetensors by {made_by}. Each `.safetensors` file holds one network's state dict in the "
            "official key layout, its extra tensors (`latent_avg`) and, in its metadata, the constructor config. "
            f"`manifest.json` lists the size and sha256 of every file{served}; FALCO checks every hash before it "
            "uses them (the Space downloads a published set at the commit its project pins).\n\n"
            f"{table}\n## Sources and terms\n\nEach file keeps the terms of its original release; check them "
            f"before any use. {non_commercial_note()}\n\n{sources}\n")


