"""Random-noise judges in the layouts of their public files, for tests and offline runs of the evaluation.

    python -m falco.evaluate.random_judges --out DIR [--tiny]

writes DIR/evaluation/, the folder falco.evaluate.judges loads instead of the public files when a run's
``--weights`` is DIR: with a random weight set in DIR (``python -m falco.weights random``), anonymize then
evaluate runs end to end, offline, on noise.  Networks get the reference seeding rule
(falco.models.random_weights); MTCNN's face logits are then shifted so that its cascade runs on few windows
(MTCNN_FACE_LOGIT).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from falco.evaluate import judges
from falco.evaluate.facenet import CASIA_CLASSES, VGGFACE2_CLASSES, InceptionResnetV1
from falco.evaluate.mtcnn import NETS as MTCNN_NETS
from falco.models.random_weights import seeded_state_dict
from falco.output_files import save_json, save_tensors, write_atomic

# The judges' tiny variants: same module names, fewer and narrower units, few classes.  MTCNN's networks are
# small already and the FID Inception is torch-fidelity's fixed architecture: both keep their real size.
TINY_FACENET = dict(width_divisor=8, repeats=[1, 1, 1], embedding_dim=64)
TINY_FACENET_CLASSES = {"facenet_casia": 16, "facenet_vgg": 12}
TINY_PROBE = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
# Added to the face logit of each MTCNN stage (the bias of its face / not-face layer).  Seeded alone, P-Net passes
# about a tenth of all windows over its threshold (hundreds per photo, each cropped and run through R-Net), and
# R-Net almost none of them, so O-Net never ran.  With these, P-Net passes about one window in a hundred, and
# R-Net and O-Net each about half of what reaches them: every stage of the cascade runs, on few windows.
MTCNN_FACE_LOGIT = {"pnet": ("conv4_1.bias", -0.4), "rnet": ("dense5_1.bias", 1.3), "onet": ("dense6_1.bias", 0.3)}


def make_random_judges(out_dir: str | Path, tiny: bool) -> Path:
    """Random evaluation networks in the layouts of their public files, in ``out_dir/evaluation/``: what
    falco.evaluate.judges loads when the run's ``--weights`` is this folder.  Returns that folder."""
    folder = Path(out_dir) / judges.RANDOM_SUBFOLDER
    (folder / judges.PROBE_FOLDER).mkdir(parents=True, exist_ok=True)
    files = judges.EVALUATION_FILES
    for name, classes in (("facenet_casia", CASIA_CLASSES), ("facenet_vgg", VGGFACE2_CLASSES)):
        config = dict(TINY_FACENET, num_classes=TINY_FACENET_CLASSES[name]) if tiny else \
            dict(InceptionResnetV1.RELEASED, num_classes=classes)
        with torch.device("meta"):
            layout = InceptionResnetV1(**config).state_dict()
        _save_state(folder / files[name].filename, seeded_state_dict(layout, prefix=f"{name}."))
    for name, cls in MTCNN_NETS.items():
        with torch.device("meta"):
            layout = cls().state_dict()
        state = seeded_state_dict(layout, prefix=f"{name}.")
        key, shift = MTCNN_FACE_LOGIT[name]
        state[key][1] += shift   # [not face, face]
        _save_state(folder / files[name].filename, state)
    _save_state(folder / files["fid_inception"].filename,
                seeded_state_dict(judges.fid_layout(), prefix="fid_inception."))
    import open_clip
    model_cfg = TINY_PROBE if tiny else open_clip.get_model_config(judges.PROBE_MODEL)
    probe = folder / judges.PROBE_FOLDER
    save_tensors(probe / files["probe"].filename, seeded_state_dict(judges.probe_layout(model_cfg), prefix="probe."))
    save_json(probe / "open_clip_config.json", {"model_cfg": model_cfg}, indent=1)
    return folder


def _save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    # The public files are torch.save'd state dicts: the random ones are too, read back with weights_only=True.
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m falco.evaluate.random_judges",
                                     description="write random-noise evaluation networks into DIR/evaluation/")
    parser.add_argument("--out", type=Path, required=True,
                        help="the weights folder the evaluation's --weights names (e.g. a random set's)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny FaceNet and probe (MTCNN and the FID Inception keep their real size)")
    args = parser.parse_args(argv)
    folder = make_random_judges(args.out, args.tiny)
    print(f"random {'tiny' if args.tiny else 'full-size'} evaluation networks (noise) in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
