"""The evaluation's FID against torch-fidelity's (torch_fidelity.calculate_metrics): the same Inception file and the
same images give the same number at every image size, so the FID resizes to 299 px as the published FIDs did.

The Inception file is the random one of the test weight set (torch-fidelity's layout, real size).  The comparison
takes Inception's 64-d features: the resize under test comes before the first layer, and the FID arithmetic is the
same at any width.  With 2048 features each library's 2048 x 2048 eigenvalue problem takes about ten seconds on this
CPU, and a random network's last features barely vary (FIDs of 1e-8 to 1e-5), so that rounding weighs more."""

import numpy as np
import pytest
import torch
from PIL import Image

from falco.evaluate import judges
from falco.evaluate.metrics import _fid_inception, _fid_metric, _fid_update, _fid_value, _weights_only_loads

INCEPTION = "inception-v3-compat"   # torch-fidelity's name for the TensorFlow-compatible InceptionV3
FEATURES = 64
# Three images a side: covariances of rank 2, so that the trace of the square root sums more than one eigenvalue;
# every other eigenvalue is zero, and their rounding (at most 2e-7 of the FID here) stays far below the 1e-4 asked.
IMAGES_A_SIDE = 3
CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def fid_weights(tiny_weights_with_judges):
    return tiny_weights_with_judges / judges.RANDOM_SUBFOLDER / judges.EVALUATION_FILES["fid_inception"].filename


@pytest.fixture(scope="session")
def evaluator_inception(fid_weights):
    return _fid_inception(fid_weights, FEATURES, CPU)


@pytest.fixture(scope="session")
def torch_fidelity_inception(fid_weights):
    """torch-fidelity's own InceptionV3, built by its own create_feature_extractor from the file."""
    from torch_fidelity.utils import create_feature_extractor

    with _weights_only_loads():   # torch-fidelity unpickles its file; here it may read tensors only
        return create_feature_extractor(INCEPTION, [str(FEATURES)], cuda=False, verbose=False,
                                        feature_extractor_weights_path=str(fid_weights))


@pytest.fixture
def torch_fidelity_reuses_its_inception(torch_fidelity_inception, monkeypatch):
    """calculate_metrics builds its extractor anew at every call (half a second of reading and initialising 24M
    weights, four times): it gets the one built above instead, after a check that it asks for that one."""
    import torch_fidelity.metrics

    def built_once(name, features, cuda=True, **_):
        assert (name, list(features), cuda) == (INCEPTION, [str(FEATURES)], False)
        return torch_fidelity_inception

    monkeypatch.setattr(torch_fidelity.metrics, "create_feature_extractor", built_once)


def textured_images(seed: int, size: int, grain: float) -> list[Image.Image]:
    """A smooth random colour field with per-pixel grain: detail at every scale, so that how an image is brought
    to 299 px shows in its features (flat images would resize alike either way)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(IMAGES_A_SIDE):
        field = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        pixels = np.asarray(field.resize((size, size), Image.Resampling.BICUBIC), np.float32)
        pixels += grain * rng.standard_normal(pixels.shape, dtype=np.float32)
        images.append(Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8)))
    return images


class Uint8Images(torch.utils.data.Dataset):
    """What torch-fidelity reads: [3, H, W] uint8 tensors, the same bytes the evaluator's update gets."""

    def __init__(self, images: list[Image.Image]):
        self.tensors = [torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1) for image in images]

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tensors[index]


def torch_fidelity_fid(real: list[Image.Image], fake: list[Image.Image], weights) -> float:
    import torch_fidelity

    metrics = torch_fidelity.calculate_metrics(
        input1=Uint8Images(fake), input2=Uint8Images(real), fid=True, feature_extractor=INCEPTION,
        feature_layer_fid=str(FEATURES), feature_extractor_weights_path=str(weights),
        cuda=False, cache=False, save_cpu_ram=True, verbose=False)   # save_cpu_ram: no loader worker processes
    return metrics[torch_fidelity.KEY_METRIC_FID]


def evaluator_fid(real: list[Image.Image], fake: list[Image.Image], inception) -> float:
    """As Evaluator.evaluate does: one image per update, the originals' accumulator merged into the fakes'."""
    real_fid, fake_fid = _fid_metric(inception, CPU), _fid_metric(inception, CPU)
    for image in real:
        _fid_update(real_fid, [image], True, CPU)
    for image in fake:
        _fid_update(fake_fid, [image], False, CPU)
    return _fid_value(real_fid, fake_fid)


@pytest.mark.slow
@pytest.mark.parametrize("size", [256, 299, 512, 1024])
@pytest.mark.usefixtures("torch_fidelity_reuses_its_inception")
def test_fid_is_torch_fidelitys_at_every_image_size(size, fid_weights, evaluator_inception):
    real = textured_images(seed=size, size=size, grain=40.0)
    fake = textured_images(seed=size + 1, size=size, grain=5.0)
    reference = torch_fidelity_fid(real, fake, fid_weights)
    assert reference > 0.01   # the two sets differ: the comparison is not of two zeros
    assert evaluator_fid(real, fake, evaluator_inception) == pytest.approx(reference, rel=1e-4, abs=0)
