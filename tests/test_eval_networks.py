"""The evaluation networks against facenet-pytorch's own code (goldens made by
tests/fixtures/golden_eval/make_golden.py in a throwaway environment), their file layouts, sources and the
random judges of a weight set."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from falco.errors import WeightsError
from falco.evaluate import judges
from falco.evaluate.facenet import CASIA_CLASSES, VGGFACE2_CLASSES, InceptionResnetV1
from falco.evaluate.mtcnn import MTCNN, NETS
from falco.models.random_weights import seeded_state_dict
from tests.model_helpers import layout, seeded


@pytest.fixture(scope="module")
def golden(fixtures_dir):
    return load_file(fixtures_dir / "golden_eval" / "facenet_mtcnn.safetensors")


@pytest.fixture(scope="module")
def layouts(fixtures_dir):
    return json.loads((fixtures_dir / "golden_eval" / "layouts.json").read_text())


def seeded_mtcnn(**options) -> MTCNN:
    return MTCNN(**{name: seeded(cls(), f"{name}.") for name, cls in NETS.items()}, **options)


@pytest.mark.parametrize("name, classes", [("facenet_casia", CASIA_CLASSES), ("facenet_vggface2", VGGFACE2_CLASSES)])
def test_facenet_layout_is_the_released_files(layouts, name, classes):
    with torch.device("meta"):
        ours = layout(InceptionResnetV1(num_classes=classes).state_dict())
    assert ours == layouts[name]


@pytest.mark.parametrize("name", list(NETS))
def test_mtcnn_layouts_and_pins_are_the_shipped_files(layouts, name):
    with torch.device("meta"):
        ours = layout(NETS[name]().state_dict())
    assert ours == layouts[name]
    pins = {s.sha256 for s in judges.EVALUATION_FILES[name].sources}
    assert pins == {layouts[f"{name}_sha256"]}


def test_facenet_embedding_matches_facenet_pytorch(golden):
    model = seeded(InceptionResnetV1())
    ours = model.embed(golden["faces_uint8"].float() / 255)
    expected = golden["facenet_embedding"]
    assert ours.shape == (2, 512)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(2))
    assert (ours - expected).abs().max() <= 1e-4, (ours - expected).abs().max()


def test_facenet_embed_resizes_and_rejects_bad_shapes():
    model = seeded(InceptionResnetV1(width_divisor=8, repeats=[1, 1, 1], embedding_dim=16))
    colours = torch.rand(2, 3, 1, 1)
    # Any size is resized to 160 first: a plain colour stays that colour, so its embedding does not change.
    at_160, other = colours.expand(2, 3, 160, 160), colours.expand(2, 3, 97, 230)
    torch.testing.assert_close(model.embed(other), model.embed(at_160), atol=1e-5, rtol=0)
    # The standardisation is the port's: (x * 255 - 127.5) / 128, so a grey of 127.5 is the zero input.
    grey = torch.full((1, 3, 160, 160), 127.5 / 255)
    torch.testing.assert_close(model.embed(grey), model(torch.zeros(1, 3, 160, 160)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        model.embed(torch.rand(3, 160, 160))
    with pytest.raises(ValueError):
        InceptionResnetV1(width_divisor=3)


def test_mtcnn_networks_match_facenet_pytorch(golden):
    mtcnn = seeded_mtcnn()
    with torch.no_grad():
        outputs = {"pnet": mtcnn.pnet(golden["pnet_x"]), "rnet": mtcnn.rnet(golden["rnet_x"]),
                   "onet": mtcnn.onet(golden["onet_x"])}
    for name, out in outputs.items():
        for i, t in enumerate(out):
            torch.testing.assert_close(t, golden[f"{name}_out{i}"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side, label, thresholds", [(512, "default", (0.6, 0.7, 0.7)),
                                                     (200, "default", (0.6, 0.7, 0.7)),
                                                     (200, "low", (0.5, 0.5, 0.5))])
def test_mtcnn_detect_matches_facenet_pytorch(golden, astronaut, side, label, thresholds):
    image = Image.open(astronaut).convert("RGB").resize((side, side), Image.BILINEAR)
    (boxes,) = seeded_mtcnn(thresholds=thresholds).detect([image])
    expected = golden[f"detect_{side}_{label}"].numpy()
    assert boxes.dtype == np.float32 and boxes.shape == expected.shape
    np.testing.assert_allclose(boxes, expected, rtol=1e-5, atol=1e-3)


def test_mtcnn_detect_orders_largest_first_and_handles_blank_and_mixed_sizes():
    mtcnn = seeded_mtcnn(thresholds=(0.5, 0.5, 0.5))
    noise = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    found = mtcnn.detect([Image.fromarray(noise), Image.new("L", (30, 40)), Image.new("RGB", (10, 10))])
    assert len(found) == 3
    for boxes in found:
        assert boxes.ndim == 2 and boxes.shape[1] == 5
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert np.all(np.diff(area) <= 0)
        assert np.all((boxes[:, 4] > 0.5) & (boxes[:, 4] <= 1))
    assert found[2].shape == (0, 5)   # smaller than the 20 px minimum face: no pyramid level at all


@pytest.mark.slow
def test_fid_layout_is_torch_fidelity_extractor(tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    state = seeded_state_dict(judges.fid_layout(), prefix="fid.")
    torch.save(state, tmp_path / "fid.pth")
    judges.CHECKS["fid_inception"](tmp_path / "fid.pth", None)
    # torch-fidelity loads it strictly: every key and shape is its own.
    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(tmp_path / "fid.pth"))
    torch.testing.assert_close(extractor.fc.weight, state["fc.weight"])


def test_checks_refuse_wrong_layouts_and_pickled_code(tmp_path):
    small = InceptionResnetV1(num_classes=7, **{"width_divisor": 8, "repeats": [1, 1, 1], "embedding_dim": 16})
    torch.save(small.state_dict(), tmp_path / "small.pt")
    judges.CHECKS["facenet_casia"](tmp_path / "small.pt", None)   # a random set's reduced network is fine ...
    source = judges.EVALUATION_FILES["facenet_casia"].sources[0]
    with pytest.raises(WeightsError, match="not the released"):   # ... a download must be the released one
        judges.CHECKS["facenet_casia"](tmp_path / "small.pt", source)
    torch.save({**small.state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match="1 unexpected"):
        judges.CHECKS["facenet_vgg"](tmp_path / "extra.pt", None)
    torch.save(NETS["rnet"]().state_dict(), tmp_path / "rnet.pt")
    with pytest.raises(WeightsError, match="pnet layout"):
        judges.CHECKS["pnet"](tmp_path / "rnet.pt", None)
    torch.save({"weights": InceptionResnetV1}, tmp_path / "code.pt")   # a pickled class: never unpickled
    with pytest.raises(WeightsError, match="plain tensor checkpoint"):
        judges.CHECKS["onet"](tmp_path / "code.pt", None)


def test_public_sources_go_through_the_official_fetcher_with_strict_checks(tmp_path, monkeypatch):
    served = {name: tmp_path / f"{name}.pt" for name in NETS}
    for name, path in served.items():
        torch.save(seeded(NETS[name]()).state_dict(), path)
    served["facenet_casia"] = tmp_path / "reduced.pt"
    torch.save(InceptionResnetV1(num_classes=CASIA_CLASSES, width_divisor=8, repeats=[1, 1, 1]).state_dict(),
               served["facenet_casia"])
    calls = []

    def fake_fetch(entry, folder, check=None, progress=None, sources=None):
        calls.append((entry.name, folder))
        check(served[entry.name], entry.sources[-1])   # as falco.weights.official does once a file is here
        return served[entry.name], entry.sources[-1]

    monkeypatch.setattr(judges, "fetch_file", fake_fetch)
    monkeypatch.setenv(judges.EVALUATION_WEIGHTS_ENV, str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="not the released"):
        judges.fetch_evaluation_weights(None, progress=False)
    assert calls == [("facenet_casia", tmp_path / "cache")]
    for name in NETS:   # MTCNN's files in their real layout pass their check as downloads
        judges.CHECKS[name](served[name], judges.EVALUATION_FILES[name].sources[-1])
    pinned = {name for name, entry in judges.EVALUATION_FILES.items() if all(s.sha256 for s in entry.sources)}
    assert pinned == {"facenet_vgg", "pnet", "rnet", "onet", "fid_inception"}


@pytest.mark.slow
def test_random_judges_load_in_eval_mode(tiny_weights_with_judges, astronaut):
    loaded = judges.load_judges(str(tiny_weights_with_judges), device="cpu")
    assert set(loaded.facenet) == {"casia", "vgg"}
    for net in (*loaded.facenet.values(), loaded.mtcnn, loaded.probe_encoder.model):
        assert not net.training and not any(p.requires_grad for p in net.parameters())
    # Two files, two networks: the random weights are seeded per file.
    assert not torch.equal(loaded.facenet["casia"].conv2d_1a.conv.weight, loaded.facenet["vgg"].conv2d_1a.conv.weight)
    assert loaded.facenet["casia"].logits.out_features != loaded.facenet["vgg"].logits.out_features
    faces = torch.rand(3, 3, 128, 128)
    embeddings = loaded.facenet["vgg"].embed(faces)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    photo = Image.open(astronaut)
    codes = loaded.probe_encoder.encode([photo, photo.convert("L"), photo.transpose(Image.FLIP_LEFT_RIGHT)])
    assert codes.shape[0] == 3 and codes.dtype == torch.float32
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(codes[0], loaded.probe_encoder.encode([photo])[0])
    assert loaded.fid_weights.name == judges.EVALUATION_FILES["fid_inception"].filename
    assert all(isinstance(b, np.ndarray) for b in loaded.mtcnn.detect([photo]))


def test_random_judges_folder_must_be_complete(tiny_weights_with_judges, tmp_path):
    import shutil
    copy = tmp_path / "set"
    shutil.copytree(tiny_weights_with_judges / "evaluation", copy / "evaluation")
    (copy / "evaluation" / "pnet.pt").unlink()
    with pytest.raises(WeightsError, match="pnet.pt"):
        judges.fetch_evaluation_weights(copy)
    # A folder without judges (any published set) sends the judges to their public sources.
    assert judges.random_judges_folder(tmp_path) is None


def test_random_judges_command_adds_judges_to_a_random_set_which_has_none(tmp_path):
    from falco.evaluate.random_judges import main as random_judges
    from falco.weights.__main__ import main as random_weights
    assert random_weights(["random", "--out", str(tmp_path / "set"), "--tiny", "--names", "arcface"]) == 0
    assert not (tmp_path / "set" / "evaluation").exists()   # a weight set holds no judges
    assert random_judges(["--out", str(tmp_path / "set"), "--tiny"]) == 0
    paths = judges.fetch_evaluation_weights(tmp_path / "set")
    assert paths.source == str((tmp_path / "set" / "evaluation").resolve()) and paths.probe_weights is None
    assert paths.pnet.name == "pnet.pt" and paths.facenet_vgg.name == "20180402-114759-vggface2.pt"


def test_the_weights_package_imports_nothing_of_the_evaluation():
    """The judges are fetched as the official checkpoints are (the evaluation stands on falco.weights): an import
    the other way would make the two packages one knot."""
    import ast
    from pathlib import Path

    import falco.weights
    imported = set()
    for path in Path(falco.weights.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert "falco.weights.hub" in imported   # the walk sees the package's own imports
    assert sorted(n for n in imported if n == "falco.evaluate" or n.startswith("falco.evaluate.")) == []


def test_readme_names_every_judge_licence():
    from pathlib import Path

    from falco.weights.licences import EVALUATION_LICENCES
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Evaluation networks"):]
    for terms in EVALUATION_LICENCES.values():
        assert f"[{terms.licence}]({terms.url})" in section, terms


class Payload:
    """Unpickling this runs code: what a hostile weights file would carry."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.slow
def test_the_fid_inception_file_is_read_weights_only(tmp_path):
    """torch-fidelity reads its file with weights_only=False; the evaluation makes that read weights-only."""
    import pickle

    from falco.evaluate.metrics import FORCE_WEIGHTS_ONLY, _fid_inception
    state = seeded_state_dict(judges.fid_layout(), prefix="fid.")
    torch.save({**state, "extra": Payload()}, tmp_path / "hostile.pth")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        _fid_inception(tmp_path / "hostile.pth", 64, torch.device("cpu"))
    assert FORCE_WEIGHTS_ONLY not in os.environ   # the switch is set for the load only
    torch.save(state, tmp_path / "fid.pth")
    assert _fid_inception(tmp_path / "fid.pth", 64, torch.device("cpu")).num_features == 64
