"""Random-noise weight sets in the exact Hub layout, for tests and offline smoke runs.

Networks get the reference seeding rule (falco.models.random_weights); the dlib files are
the real ones from the ``face_recognition_models`` package (dlib has no architecture to
randomise).  Outputs of such a set are noise.  ``make_random_judges`` adds the evaluation
networks (falco.evaluate.judges) in their real file layouts, under ``evaluation/``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from falco.bank import build_bank
from falco.config import BankConfig
from falco.evaluate import judges
from falco.evaluate.facenet import CASIA_CLASSES, VGGFACE2_CLASSES, InceptionResnetV1
from falco.evaluate.mtcnn import NETS as MTCNN_NETS
from falco.files import save_tensors, write_atomic
from falco.models import io
from falco.models.random_weights import random_network, seeded_state_dict
from falco.weights.hub import check_names
from falco.weights.manifest import ARTIFACTS, MANIFEST_NAME, MODEL_CARD_NAME, NETWORKS, Manifest, describe_folder
from falco.weights.model_card import model_card
from falco.weights.official import installed_file

RANDOM_BANK_SIZE = {True: 32, False: 8}   # tiny, full size
# The judges' tiny variants: same module names, fewer and narrower units, few classes.  MTCNN's networks are
# small already and the FID Inception is torch-fidelity's fixed architecture: both keep their real size.
TINY_FACENET = dict(width_divisor=8, repeats=[1, 1, 1], embedding_dim=64)
TINY_FACENET_CLASSES = {"facenet_casia": 16, "facenet_vgg": 12}
TINY_PROBE = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


def make_random_weights(out_dir: str | Path, tiny: bool, names: Iterable[str] | None = None,
                        bank_size: int | None = None, progress: bool = False) -> Manifest:
    """A complete set of random-noise weights in Hub layout (with manifest and model card).

    Networks get the reference seeding rule (deterministic, realistic statistics), the
    generator's mean w is measured from its own mapping, the bank is built with the
    random generator and FaRL, and the dlib files are the real ones from the
    ``face_recognition_models`` package (dlib has no architecture to randomise).
    """
    names = check_names(names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    needed = set(names) & set(NETWORKS)
    if "e4e" in names or "fake_bank" in names:
        needed.add("generator")   # e4e's latent_avg is the generator's mean w; the bank renders with it
    if "fake_bank" in names:
        needed.add("farl")
    models = {name: random_network(name, tiny) for name in sorted(needed)}
    mean_w = io.estimate_mean_w(models["generator"]) if "generator" in models else None
    with torch.no_grad():
        if "generator" in names:
            io.save_network(out / ARTIFACTS["generator"], "generator", models["generator"], {"latent_avg": mean_w})
        if "e4e" in names:
            rows = models["e4e"].config["n_styles"]
            io.save_network(out / ARTIFACTS["e4e"], "e4e", models["e4e"],
                            {"latent_avg": mean_w.expand(rows, -1)})
        for name in ("arcface", "farl"):
            if name in names:
                io.save_network(out / ARTIFACTS[name], name, models[name])
    for name in ("dlib_landmarks", "dlib_recognition"):
        if name in names:
            shutil.copyfile(packaged_dlib_model(ARTIFACTS[name]), out / ARTIFACTS[name])
    if "fake_bank" in names:
        n = bank_size or RANDOM_BANK_SIZE[tiny]
        build_bank(out / ARTIFACTS["fake_bank"], n, models["generator"], mean_w, models["farl"],
                   BankConfig(size=n, chunk_rows=n), progress=progress)
    manifest = describe_folder(out, None, names, note=f"RANDOM NOISE weights ({'tiny' if tiny else 'full-size'}) "
                                                      "for tests and offline smoke runs; outputs are noise.")
    manifest.write(out / MANIFEST_NAME)
    (out / MODEL_CARD_NAME).write_text(model_card(manifest, random_set=True, tiny=tiny))
    return manifest


def packaged_dlib_model(filename: str) -> Path:
    """One of dlib's real models, as the face_recognition_models package (a requirement) ships it."""
    return installed_file("face_recognition_models", f"models/{filename}")




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
        _save_state(folder / files[name].filename, seeded_state_dict(layout, prefix=f"{name}."))
    _save_state(folder / files["fid_inception"].filename,
                seeded_state_dict(judges.fid_layout(), prefix="fid_inception."))
    import open_clip
    model_cfg = TINY_PROBE if tiny else open_clip.get_model_config(judges.PROBE_MODEL)
    probe = folder / judges.PROBE_FOLDER
    save_tensors(probe / files["probe"].filename,
                    seeded_state_dict(judges.probe_layout(model_cfg), prefix="probe."))
    write_atomic(probe / "open_clip_config.json",
                 lambda tmp: tmp.write_text(json.dumps({"model_cfg": model_cfg}, indent=1)))
    return folder


def _save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    # The public files are torch.save'd state dicts: the random ones are too, read back with weights_only=True.
    write_atomic(path, lambda tmp: torch.save(state, tmp))
