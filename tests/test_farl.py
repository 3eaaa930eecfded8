import json

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import load_file

from falco.models.farl import CLIP_MEAN, CLIP_STD, FaRL, farl_preprocess
from falco.models.random_weights import seeded_state_dict
from tests.model_helpers import assert_golden, layout

SMALL = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, embed_dim=16)


@pytest.fixture(scope="module")
def farl_golden_model():
    model = FaRL()
    model.load_state_dict(seeded_state_dict(model.state_dict(), prefix=""), strict=True)
    return model


def test_default_config_is_open_clip_vit_b16_quickgelu():
    reference = open_clip.get_model_config("ViT-B-16-quickgelu")
    config = FaRL().config
    assert reference["quick_gelu"] is True
    assert config["embed_dim"] == reference["embed_dim"]
    for key in ("image_size", "patch_size", "width", "layers"):
        assert config[key] == reference["vision_cfg"][key], key
    # open_clip's default head width is 64.
    assert config["width"] // config["heads"] == reference["vision_cfg"].get("head_width", 64)


def test_layout_matches_official_visual_keys(fixtures_dir):
    official = json.loads((fixtures_dir / "checkpoints" / "farl_vit_b16.json").read_text())["keys"]
    expected = {k: v for k, v in official.items() if k.startswith("visual.")}
    ours = layout(FaRL().state_dict())
    assert ours == expected


def test_quickgelu_and_frozen():
    model = FaRL(**SMALL)
    acts = [m for m in model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))]
    assert acts and all(isinstance(m, QuickGELU) for m in acts)
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


@pytest.mark.slow
def test_golden_tokens_and_embedding(farl_golden_model, fixtures_dir):
    golden = load_file(fixtures_dir / "golden" / "farl_vit_b16.safetensors")
    with torch.no_grad():
        tokens = farl_golden_model.tokens(golden["x"])
        embedding = farl_golden_model.embed(golden["x"])
    assert tokens.shape == (2, 197, 768)
    assert_golden(tokens, golden["tokens"])
    assert_golden(embedding, golden["embedding"])
    assert_golden(farl_golden_model.embed_tokens(tokens), golden["embedding"])


def test_small_config_rebuilds_and_runs():
    model = FaRL(**SMALL)
    model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
    clone = FaRL(**model.config)
    clone.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = model.tokens(x)
        assert tokens.shape == (3, model.num_tokens, 32) == (3, 17, 32)
        assert model.embed(x).shape == (3, 16)
        assert torch.equal(clone.embed(x), model.embed(x))
        # Batch elements are independent (catches a sequence/batch axis mix-up).
        assert torch.allclose(model.tokens(x[1:2]), tokens[1:2], atol=1e-5)


def test_preprocess_normalises_resizes_and_is_differentiable():
    x = (torch.rand(2, 3, 300, 260) * 2 - 1).requires_grad_()
    y = farl_preprocess(x)
    assert y.shape == (2, 3, 224, 224)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    grey = torch.zeros(1, 3, 224, 224)                  # mid-grey: 0.5 in [0, 1]
    assert torch.allclose(farl_preprocess(grey)[0, :, 0, 0], (0.5 - mean) / std, atol=1e-6)
    white = torch.ones(1, 3, 1024, 1024)
    assert torch.allclose(farl_preprocess(white)[0, :, 100, 100], (1 - mean) / std, atol=1e-5)


def test_preprocess_centre_crops_non_square():
    # Left and right thirds differ; after the centre crop only the middle column band remains.
    x = torch.full((1, 3, 224, 336), -1.0)
    x[..., 56:280] = 1.0
    y = farl_preprocess(x)
    assert torch.allclose(y, farl_preprocess(torch.ones(1, 3, 224, 224)))


def test_bf16_autocast_stays_close_to_float32():
    model = FaRL(**SMALL)
    model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model.embed(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.embed(x)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() <= 5e-2 * reference.abs().max()
