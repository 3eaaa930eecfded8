import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import falco.bank as bank_module
from falco.bank import FakeBank, build_bank, pair_nearest, row_seed, sample_rows
from falco.cli import main
from falco.config import BankConfig
from falco.errors import WeightsError
from falco.models.farl import FaRL
from falco.models.stylegan2 import Generator

CONFIG = BankConfig(truncation_psi=0.7, seed=3, chunk_rows=4, render_batch=3)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    generator = Generator(size=16, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 8})
    farl = FaRL(image_size=32, patch_size=16, width=32, layers=1, heads=2, embed_dim=24)
    mean_w = generator.mapping(torch.randn(256, 32)).mean(0)
    return generator, mean_w, farl


def build(path, n, nets, config=CONFIG):
    return build_bank(path, n, *nets, config=config, progress=False)


def test_bank_rows_follow_the_seeding_rule(tmp_path, nets):
    generator, mean_w, farl = nets
    bank = build(tmp_path / "bank.safetensors", 10, nets)
    assert bank.w.shape == (10, 32) and bank.embeddings.shape == (10, 24)
    assert bank.seeds.tolist() == [row_seed(3, i) for i in range(10)]
    torch.testing.assert_close(bank.embeddings.norm(dim=1), torch.ones(10))
    # Row 7 by hand: seeded z, mapping, truncation toward the mean w, render, FaRL.
    z = torch.randn(32, generator=torch.Generator().manual_seed(row_seed(3, 7)))[None]
    with torch.no_grad():
        w = mean_w + 0.7 * (generator.mapping(z) - mean_w)
        image = generator(w[:, None].expand(-1, generator.num_ws, -1))
        emb = F.normalize(farl.embed(bank_module.farl_preprocess(image, 32)), dim=-1)
    torch.testing.assert_close(bank.w[7:8], w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bank.embeddings[7:8], emb, atol=1e-5, rtol=1e-5)

    with safe_open(str(tmp_path / "bank.safetensors"), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    assert config["truncation_psi"] == 0.7 and config["seed"] == 3
    assert config["generator"]["style_dim"] == 32
    loaded = FakeBank.load(tmp_path / "bank.safetensors")
    assert torch.equal(loaded.w, bank.w) and torch.equal(loaded.seeds, bank.seeds)
    assert not (tmp_path / "bank.safetensors.parts").exists()


def test_build_resumes_after_an_interruption(tmp_path, nets, monkeypatch):
    reference = build(tmp_path / "reference.safetensors", 10, nets)
    out = tmp_path / "bank.safetensors"
    real_sample_rows = sample_rows
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(len(args[3]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_sample_rows(*args, **kwargs)

    monkeypatch.setattr(bank_module, "sample_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(out, 10, nets)
    assert not out.exists()
    assert len(list((tmp_path / "bank.safetensors.parts").glob("*.safetensors"))) == 2

    calls.clear()
    resumed = build(out, 10, nets)
    # One row recomputed to check the parts, then only the missing chunk.
    assert calls == [1, 2]
    assert torch.equal(resumed.w, reference.w) and torch.equal(resumed.embeddings, reference.embeddings)
    assert torch.equal(FakeBank.load(out).seeds, reference.seeds)


def test_any_n_extends_or_cuts_an_existing_bank(tmp_path, nets):
    reference = build(tmp_path / "reference.safetensors", 9, nets)
    out = tmp_path / "bank.safetensors"
    build(out, 5, nets)
    extended = build(out, 9, nets)
    # Rows do not depend on how they were chunked (up to batched-matmul rounding).
    torch.testing.assert_close(extended.w, reference.w)
    torch.testing.assert_close(extended.embeddings, reference.embeddings)
    cut = build(out, 2, nets)
    assert len(cut) == 2 and len(FakeBank.load(out)) == 2
    torch.testing.assert_close(cut.embeddings, reference.embeddings[:2])


def test_other_settings_or_weights_are_not_mixed_in(tmp_path, nets):
    out = tmp_path / "bank.safetensors"
    build(out, 4, nets)
    with pytest.raises(WeightsError, match="other settings"):
        build(out, 8, nets, config=BankConfig(truncation_psi=0.5, seed=3, chunk_rows=4))
    generator, mean_w, farl = nets
    other_farl = FaRL(**farl.config)   # same config, other random weights
    with pytest.raises(WeightsError, match="other network weights"):
        build_bank(out, 8, generator, mean_w, other_farl, config=CONFIG, progress=False)


def test_load_refuses_files_that_are_not_banks(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError):
        FakeBank.load(path)


def test_nearest_neighbour_on_constructed_embeddings():
    gen = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(500, 64, generator=gen), dim=1)
    targets = torch.tensor([3, 499, 0, 250])
    # Scaled and perturbed copies of known rows: cosine, not dot product, must decide.
    query = embeddings[targets] * torch.tensor([[5.0], [0.1], [1.0], [30.0]])
    query = query + 0.01 * torch.randn(query.shape, generator=gen)
    assert pair_nearest(query, embeddings).tolist() == targets.tolist()
    # A query between two rows goes to the one it is closer to.
    mix = 0.6 * embeddings[10] + 0.4 * embeddings[20]
    assert pair_nearest(mix[None], embeddings).item() == 10


def test_draw_among_k_nearest_is_seeded_and_stays_in_the_top_k():
    gen = torch.Generator().manual_seed(1)
    embeddings = F.normalize(torch.randn(300, 32, generator=gen), dim=1)
    query = F.normalize(torch.randn(6, 32, generator=gen), dim=1)
    top5 = (query @ embeddings.T).topk(5, dim=1).indices
    draws = [pair_nearest(query, embeddings, k=5, seed=s) for s in range(20)]
    for d in draws:
        assert all(d[i] in top5[i] for i in range(6))
    assert torch.equal(pair_nearest(query, embeddings, k=5, seed=7), draws[7])
    assert len({tuple(d.tolist()) for d in draws}) > 1
    bank = FakeBank(torch.zeros(300, 8), embeddings, torch.arange(300), {})
    assert torch.equal(bank.nearest(query, k=5, seed=7), draws[7])
    assert torch.equal(bank.nearest(query), top5[:, 0])


def test_build_command_matches_the_published_bank(tmp_path, tiny_weights, capsys):
    # The random weight set's bank was built with the defaults: the command reproduces its rows.
    out = tmp_path / "bank.safetensors"
    assert main(["bank", "build", "--out", str(out), "--n", "5", "--chunk", "2", "--weights", str(tiny_weights),
                 "--device", "cpu"]) == 0
    assert "5/5" in capsys.readouterr().err   # the progress bar
    built, published = FakeBank.load(out), FakeBank.load(tiny_weights / "fake_bank.safetensors")
    assert len(built) == 5 and torch.equal(built.seeds, published.seeds[:5])
    torch.testing.assert_close(built.w, published.w[:5])
    torch.testing.assert_close(built.embeddings, published.embeddings[:5])


@pytest.mark.parametrize("flag, value", [("--n", "0"), ("--batch", "0"), ("--batch", "-2")])
def test_bank_build_refuses_counts_below_one_before_any_work(flag, value, tmp_path, capsys):
    from falco.cli import main
    with pytest.raises(SystemExit) as usage:
        main(["bank", "build", "--out", str(tmp_path / "bank.safetensors"), flag, value,
              "--weights", str(tmp_path / "no-such-weights")])   # never read: the check comes first
    assert usage.value.code == 2 and f"{flag} must be at least 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
