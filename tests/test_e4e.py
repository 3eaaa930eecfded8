import json

import pytest
import torch
from safetensors.torch import load_file

from falco.models.e4e import COARSE_END, MIDDLE_END, Encoder4Editing
from tests.model_helpers import assert_golden, layout, seeded_on_meta

PREFIX = "encoder."
SMALL = dict(n_styles=10, style_dim=32, widths=[16, 16, 32, 32], units=[1, 2, 2, 1], input_size=64)


def seeded_model(**config) -> Encoder4Editing:
    return seeded_on_meta(Encoder4Editing, PREFIX, **config)


def test_layout_matches_official_encoder(fixtures_dir):
    official = json.loads((fixtures_dir / "checkpoints" / "e4e_ffhq_encode.json").read_text())["keys"]
    expected = {k.removeprefix(PREFIX): v for k, v in official.items() if k.startswith(PREFIX)}
    with torch.device("meta"):
        ours = layout(Encoder4Editing().state_dict())
    assert ours == expected


@pytest.mark.slow
def test_golden_codes(fixtures_dir):
    golden = load_file(fixtures_dir / "golden" / "e4e_encoder.safetensors")
    model = seeded_model()
    with torch.no_grad():
        ours = model(golden["x"])
    assert_golden(ours, golden["codes"])


def test_small_config_runs_frozen_and_rebuilds_from_config():
    model = seeded_model(**SMALL)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    rebuilt = Encoder4Editing(**json.loads(json.dumps(model.config)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}

    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes = model(x)
    assert codes.shape == (2, 10, 32)
    assert torch.isfinite(codes).all()
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 128, 128))


def test_codes_are_w0_plus_per_style_deltas():
    model = seeded_model(**SMALL)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    silenced = [COARSE_END - 1, MIDDLE_END - 1, 9]   # one style of each pyramid level
    for i in silenced:
        model.styles[i].linear.weight.zero_()
        model.styles[i].linear.bias.zero_()
    with torch.no_grad():
        codes = model(x)
    for i in range(1, 10):
        same_as_w0 = torch.equal(codes[:, i], codes[:, 0])
        assert same_as_w0 == (i in silenced), i

    # With w0 silenced, each code is its own block's delta on its pyramid level.
    model.styles[0].linear.weight.zero_()
    model.styles[0].linear.bias.zero_()
    with torch.no_grad():
        deltas = model(x)
    assert deltas[:, 0].abs().max() == 0
    torch.testing.assert_close(codes[:, 4] - codes[:, 0], deltas[:, 4], atol=1e-5, rtol=1e-5)


def test_small_config_under_bf16_autocast():
    model = seeded_model(**SMALL)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x).float()
    scale = reference.abs().max()
    assert (mixed - reference).abs().max() < 0.05 * scale
