import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torchvision.transforms import Resize

from falco.models.arcface import ArcFace, identity_preprocess
from tests.model_helpers import assert_golden, layout, seeded_on_meta

SMALL = dict(widths=[16, 16, 32, 32], units=[1, 2, 1, 1], input_size=32, embedding_dim=24)


def seeded_model(**config) -> ArcFace:
    return seeded_on_meta(ArcFace, **config)


def test_layout_matches_official_checkpoint(fixtures_dir):
    expected = json.loads((fixtures_dir / "checkpoints" / "model_ir_se50.json").read_text())["keys"]
    with torch.device("meta"):
        ours = layout(ArcFace().state_dict())
    assert ours == expected


@pytest.mark.slow
def test_golden_embedding(fixtures_dir):
    golden = load_file(fixtures_dir / "golden" / "arcface_ir_se50.safetensors")
    model = seeded_model()
    with torch.no_grad():
        ours = model(golden["x"])
    assert_golden(ours, golden["embedding"])


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Row i averages input bins [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        start, stop = (i * n_in) // n_out, math.ceil((i + 1) * n_in / n_out)
        m[i, start:stop] = 1 / (stop - start)
    return m


@pytest.mark.parametrize("size", [256, 300, 1024])
def test_identity_preprocess_matches_falco_recipe(size):
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    # FALCO's IDLoss: torchvision Resize(256, antialias=True), crop, AdaptiveAvgPool2d(112).
    crop = Resize(256, antialias=True)(x)[:, :, 35:223, 32:220].double()
    rows, cols = adaptive_pool_matrix(188, 112), adaptive_pool_matrix(188, 112)
    expected = (rows @ crop @ cols.T).float()
    ours = identity_preprocess(x)
    assert ours.shape == (2, 3, 112, 112)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_identity_preprocess_is_differentiable_and_rejects_non_square():
    x = torch.randn(1, 3, 512, 512, requires_grad=True)
    identity_preprocess(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # Rows above the crop (35/256 of the height, less the resize kernel's reach) carry no identity signal.
    assert x.grad[:, :, :64].abs().max() == 0 and x.grad[:, :, 64:80].abs().max() > 0
    with pytest.raises(ValueError):
        identity_preprocess(torch.zeros(1, 3, 256, 200))


def test_small_config_runs_frozen_and_rebuilds_from_config():
    model = seeded_model(**SMALL)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    rebuilt = ArcFace(**json.loads(json.dumps(model.config)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}

    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    emb = model(x)
    assert emb.shape == (3, 24) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    # Only latent codes are optimised: gradients must still reach the input.
    emb[:, 0].sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 64, 64))


def test_small_config_under_bf16_autocast():
    model = seeded_model(**SMALL)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    assert mixed.dtype == torch.float32
    cosine = (mixed * reference).sum(dim=1)
    assert cosine.min() > 0.99, cosine
