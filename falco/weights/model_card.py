"""The model card (README.md) of a weight set: what each file is, where it comes from, its terms."""

from __future__ import annotations

from falco.weights.manifest import Manifest

SOURCES = {
    "generator": "StyleGAN2 FFHQ config-f 1024 (Karras et al., CVPR 2020) in rosinality's PyTorch layout: the "
                 "`decoder` of e4e_ffhq_encode.pt or `g_ema` of stylegan2-ffhq-config-f.pt. NVIDIA Source Code "
                 "License-NC: non-commercial use only.",
    "e4e": "e4e encoder of e4e_ffhq_encode.pt (Tov et al., SIGGRAPH 2021; omertov/encoder4editing).",
    "arcface": "ArcFace IR-SE50 model_ir_se50.pth (TreB1eN/InsightFace_Pytorch, as used by pSp and e4e).",
    "farl": "Image tower of FaRL-Base-Patch16-LAIONFace20M-ep64.pth (Zheng et al., CVPR 2022; FacePerceiver/FaRL).",
    "dlib_landmarks": "shape_predictor_68_face_landmarks.dat (dlib; trained on iBUG 300-W, whose terms exclude "
                      "commercial use).",
    "dlib_recognition": "dlib_face_recognition_resnet_model_v1.dat (dlib; see davisking/dlib-models).",
    "fake_bank": "Truncated (psi 0.7) samples of the generator above with FaRL embeddings, built with "
                 "`python -m falco.cli bank build`.",
}


def model_card(manifest: Manifest, random_set: bool = False, tiny: bool = False) -> str:
    rows = "\n".join(f"| `{a.filename}` | {a.description} | {a.size} | `{a.sha256}` |"
                     for a in manifest.artifacts.values())
    table = f"| file | content | bytes | sha256 |\n| --- | --- | --- | --- |\n{rows}\n"
    if random_set:
        return ("---\ntags:\n- falco\n- random-weights\n---\n\n"
                f"# FALCO random weights ({'tiny' if tiny else 'full-size'}) - NOISE, NOT A MODEL\n\n"
                "Every network here has random weights made by a fixed seeding rule: its outputs are noise. "
                "The set exists so that tests and offline smoke runs exercise the exact Hub layout of the FALCO "
                "Space (`python -m falco.weights random`). The dlib files are the real dlib models. "
                "Never use this set to anonymize anything.\n\n" + table)
    sources = "\n".join(f"- `{manifest.artifacts[n].filename}`: {SOURCES[n]}" for n in manifest.artifacts)
    return ("---\nlicense: other\ntags:\n- falco\n- face-anonymization\n- stylegan2\n---\n\n"
            "# FALCO Space weights\n\n"
            "The networks of the FALCO face anonymization Space (Barattin et al., \"Attribute-preserving Face "
            "Dataset Anonymization via Latent Code Optimization\", CVPR 2023), converted from their official "
            "releases to safetensors by `python -m falco.weights publish`. Each `.safetensors` file holds one "
            "network's state dict in the official key layout, its extra tensors (`latent_avg`) and, in its "
            "metadata, the constructor config. `manifest.json` lists the size and sha256 of every file; the "
            "Space downloads them at a pinned commit and checks every hash.\n\n"
            f"{table}\n## Sources and terms\n\nEach file keeps the terms of its original release; check them "
            f"before any use.\n\n{sources}\n")


