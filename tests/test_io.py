"""Checkpoint IO: our safetensors files, the official checkpoint containers, and publishing."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from falco.errors import WeightsError
from falco.models import io
from falco.models.random_weights import TINY_CONFIGS, seeded_state_dict, seeded_tensor
from falco.weights import ARTIFACTS, MANIFEST_NAME, Manifest
from falco.weights.manifest import sha256_file
from falco.weights.publish import publish
from falco.weights.random_set import packaged_dlib_model

TINY = {name: cls(**TINY_CONFIGS[name]) for name, cls in
        (("generator", io.Generator), ("e4e", io.Encoder4Editing), ("arcface", io.ArcFace), ("farl", io.FaRL))}
for _name, _model in TINY.items():
    _model.load_state_dict(seeded_state_dict(_model.state_dict(), prefix=f"{_name}."), strict=True)

LOADERS = {"generator": io.load_generator, "e4e": io.load_e4e, "arcface": io.load_arcface, "farl": io.load_farl}


def assert_same_state(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


@pytest.mark.parametrize("name", list(LOADERS))
def test_safetensors_round_trip_keeps_config_and_tensors(name, tmp_path):
    model = TINY[name]
    extras = {}
    if name == "generator":
        extras = {"latent_avg": torch.randn(model.style_dim)}
    elif name == "e4e":
        extras = {"latent_avg": torch.randn(model.config["n_styles"], model.config["style_dim"])}
    path = io.save_network(tmp_path / f"{name}.safetensors", name, model, extras)
    loaded = LOADERS[name](path)
    loaded_model, extra = loaded if isinstance(loaded, tuple) else (loaded, None)
    assert type(loaded_model) is type(model)
    assert json.loads(json.dumps(loaded_model.config)) == json.loads(json.dumps(model.config))
    assert_same_state(loaded_model, model.state_dict())
    assert not any(p.requires_grad for p in loaded_model.parameters())
    if extras:
        assert torch.equal(extra, extras["latent_avg"])


def test_wrong_network_file_is_refused(tmp_path):
    path = io.save_network(tmp_path / "arcface.safetensors", "arcface", TINY["arcface"])
    with pytest.raises(WeightsError, match="holds arcface, not the farl"):
        io.load_farl(path)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    with pytest.raises(WeightsError, match="no FALCO network"):
        io.load_arcface(foreign)


class NotATensor:
    pass


def test_official_files_are_never_unpickled_beyond_tensors(tmp_path):
    path = tmp_path / "model_ir_se50.pth"
    torch.save({"payload": NotATensor()}, path)
    with pytest.raises(WeightsError, match="cannot be loaded as a plain tensor checkpoint"):
        io.load_arcface(path)
    # A pickle with a .safetensors name goes to safetensors, which refuses it.
    disguised = tmp_path / "arcface.safetensors"
    disguised.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        io.load_arcface(disguised)


def test_unknown_and_missing_files(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(WeightsError, match="expected a .safetensors file"):
        io.load_farl(tmp_path / "weights.bin")
    with pytest.raises(WeightsError, match="does not exist"):
        io.load_e4e(tmp_path / "nothing.pt")


def test_layout_mismatch_is_one_clear_error(tmp_path):
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    torch.save({"g_ema": {"style.1.weight": torch.zeros(3)}, "latent_avg": torch.zeros(512)}, path)
    with pytest.raises(WeightsError, match=r"does not match the Generator layout: \d+ missing, 0 unexpected"):
        io.load_generator(path)


def test_missing_mean_w_is_estimated_from_the_mapping(tmp_path):
    model = TINY["generator"]
    path = io.save_network(tmp_path / "g.safetensors", "generator", model)   # no latent_avg
    _, mean_w = io.load_generator(path)
    assert torch.allclose(mean_w, io.estimate_mean_w(model))


# --- Tiny networks in the official containers: `config` names the architecture the file lacks -----
def prefixed(prefix: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in model.state_dict().items()}


def test_tiny_e4e_and_its_generator_from_the_official_e4e_container(tmp_path):
    encoder, generator = TINY["e4e"], TINY["generator"]
    latent_avg = torch.randn(encoder.config["n_styles"], encoder.config["style_dim"])
    torch.save({"state_dict": prefixed("encoder.", encoder) | prefixed("decoder.", generator),
                "latent_avg": latent_avg, "opts": {"encoder_type": "Encoder4Editing"}}, tmp_path / "e4e_ffhq_encode.pt")

    path = io.convert("e4e", tmp_path / "e4e_ffhq_encode.pt", tmp_path / "e4e.safetensors", config=TINY_CONFIGS["e4e"])
    model, loaded_latent_avg = io.load_e4e(path)
    assert model.config == encoder.config and torch.equal(loaded_latent_avg, latent_avg)
    assert_same_state(model, encoder.state_dict())

    path = io.convert("generator", tmp_path / "e4e_ffhq_encode.pt", tmp_path / "generator.safetensors",
                      config=TINY_CONFIGS["generator"])
    model, mean_w = io.load_generator(path)
    assert torch.equal(mean_w, latent_avg[0]) or torch.allclose(mean_w, latent_avg.mean(0))
    assert_same_state(model, generator.state_dict())


def test_tiny_generator_from_the_official_stylegan2_container(tmp_path):
    mean_w = torch.randn(TINY_CONFIGS["generator"]["style_dim"])
    torch.save({"g_ema": TINY["generator"].state_dict(), "latent_avg": mean_w}, tmp_path / "stylegan2.pt")
    model, loaded_mean_w = io.load_generator(tmp_path / "stylegan2.pt", config=TINY_CONFIGS["generator"])
    assert torch.equal(loaded_mean_w, mean_w)
    assert_same_state(model, TINY["generator"].state_dict())


def test_tiny_arcface_and_farl_from_their_official_containers(tmp_path):
    torch.save(TINY["arcface"].state_dict(), tmp_path / "model_ir_se50.pth")   # a bare state dict
    text_tower = {"positional_embedding": torch.zeros(77, 8), "logit_scale": torch.tensor(4.6)}
    torch.save({"state_dict": prefixed("", TINY["farl"]) | text_tower}, tmp_path / "FaRL.pth")
    for name, src in (("arcface", "model_ir_se50.pth"), ("farl", "FaRL.pth")):
        path = io.convert(name, tmp_path / src, tmp_path / f"{name}.safetensors", config=TINY_CONFIGS[name])
        model = LOADERS[name](path)
        assert model.config == TINY[name].config
        assert_same_state(model, TINY[name].state_dict())


def test_official_tiny_file_without_its_config_is_a_layout_error(tmp_path):
    torch.save(TINY["arcface"].state_dict(), tmp_path / "model_ir_se50.pth")
    with pytest.raises(WeightsError, match="does not match the ArcFace layout"):
        io.load_arcface(tmp_path / "model_ir_se50.pth")


def test_our_files_keep_their_own_config(tmp_path):
    """A config for one of our files must agree with the one it carries: never a silent other architecture."""
    path = io.save_network(tmp_path / "e4e.safetensors", "e4e", TINY["e4e"], {"latent_avg": torch.zeros(10, 64)})
    model, _ = io.load_e4e(path, config=TINY_CONFIGS["e4e"])
    assert model.config == TINY["e4e"].config
    with pytest.raises(WeightsError, match="is a e4e with n_styles=10, not the n_styles=18"):
        io.load_e4e(path, config={"n_styles": 18})
    path = io.save_network(tmp_path / "g.safetensors", "generator", TINY["generator"])
    io.load_generator(path, config=TINY_CONFIGS["generator"])   # int channel keys match the stored str keys


def test_convert_knows_only_the_layouts_of_each_network(tmp_path):
    with pytest.raises(ValueError, match="unknown layout 'transformers-clip' for the arcface"):
        io.convert("arcface", tmp_path / "a.pth", tmp_path / "a.safetensors", layout="transformers-clip")
    with pytest.raises(ValueError, match="unknown layout 'open-clip' for the farl"):
        io.convert("farl", tmp_path / "a.pth", tmp_path / "a.safetensors", layout="open-clip")


# --- FaRL from a transformers CLIP conversion (Green-Sky/FaRL-Base-Patch16-LAIONFace20M-ep64) --------
def tiny_transformers_clip(with_text_tower: bool):
    """transformers' CLIP at FaRL's tiny config, every tensor random (no zero biases or unit norms to hide a
    swapped key)."""
    transformers = pytest.importorskip("transformers")
    tiny = io.FaRL(**TINY_CONFIGS["farl"]).config
    vision = transformers.CLIPVisionConfig(
        hidden_size=tiny["width"], intermediate_size=4 * tiny["width"], num_hidden_layers=tiny["layers"],
        num_attention_heads=tiny["heads"], patch_size=tiny["patch_size"], image_size=tiny["image_size"],
        projection_dim=tiny["embed_dim"], hidden_act="quick_gelu", layer_norm_eps=1e-5)
    if with_text_tower:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision.to_dict(),
                                                               projection_dim=tiny["embed_dim"]))
    else:
        model = transformers.CLIPVisionModelWithProjection(vision)
    model.load_state_dict(seeded_state_dict(model.state_dict(), prefix="hf."), strict=True)
    return model.eval()


@pytest.mark.parametrize("with_text_tower", [False, True], ids=["CLIPVisionModelWithProjection", "CLIPModel"])
def test_farl_from_transformers_clip_gives_transformers_outputs(with_text_tower, tmp_path):
    """The key map is exact: same random weights, same input -> our tokens and embedding are transformers'."""
    hf = tiny_transformers_clip(with_text_tower)
    hf.save_pretrained(tmp_path / "hub")   # model.safetensors, as the Hub repo holds it
    farl = io.load_farl(tmp_path / "hub" / "model.safetensors", config=TINY_CONFIGS["farl"],
                        layout="transformers-clip")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, embedding = farl.tokens(x), farl.embed(x)
        if with_text_tower:
            vision = hf.vision_model(pixel_values=x)
            hf_tokens, hf_embedding = vision.last_hidden_state, hf.visual_projection(vision.pooler_output)
        else:
            out = hf(pixel_values=x)
            hf_tokens, hf_embedding = out.last_hidden_state, out.image_embeds
    assert tokens.shape == hf_tokens.shape == (2, farl.num_tokens, 64)   # before post_layernorm in both
    torch.testing.assert_close(tokens, hf_tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embedding, hf_embedding, rtol=1e-4, atol=1e-5)

    converted = io.convert("farl", tmp_path / "hub" / "model.safetensors", tmp_path / "farl.safetensors",
                           config=TINY_CONFIGS["farl"], layout="transformers-clip")
    assert_same_state(io.load_farl(converted), farl.state_dict())


def test_transformers_clip_layout_is_strict(tmp_path):
    state = {k: v.contiguous() for k, v in tiny_transformers_clip(with_text_tower=False).state_dict().items()}
    with_extra = tmp_path / "extra.safetensors"
    save_file(state | {"vision_model.encoder.layers.0.adapter.weight": torch.zeros(2)}, str(with_extra))
    with pytest.raises(WeightsError, match="1 keys outside its layout .e.g. vision_model.encoder.layers.0.adapter"):
        io.load_farl(with_extra, config=TINY_CONFIGS["farl"], layout="transformers-clip")
    without_k = tmp_path / "without_k.safetensors"
    save_file({k: v for k, v in state.items() if "layers.1.self_attn.k_proj" not in k}, str(without_k))
    with pytest.raises(WeightsError, match="layer 1 has only the q/v attention"):
        io.load_farl(without_k, config=TINY_CONFIGS["farl"], layout="transformers-clip")
    without_layer = tmp_path / "without_layer.safetensors"
    save_file({k: v for k, v in state.items() if ".layers.1." not in k}, str(without_layer))
    with pytest.raises(WeightsError, match="does not match the FaRL layout: 12 missing"):
        io.load_farl(without_layer, config=TINY_CONFIGS["farl"], layout="transformers-clip")
    # The official file in the transformers layout: refused by name, before any unpickling.
    official = tmp_path / "FaRL.pth"
    torch.save({"payload": NotATensor()}, official)
    with pytest.raises(WeightsError, match="read from .safetensors files only"):
        io.load_farl(official, layout="transformers-clip")


# --- Full size: official containers, as the original releases store them --------------------
def official_tensors(fixtures_dir: Path, layout: str, seed_prefix: str = "") -> dict[str, torch.Tensor]:
    keys = json.loads((fixtures_dir / "checkpoints" / f"{layout}.json").read_text())["keys"]
    tensors = {}
    for key, spec in keys.items():
        dtype, dims = re.fullmatch(r"(\w+)\[([\d,]*)\]", spec).groups()
        shape = tuple(int(d) for d in dims.split(",") if d)
        tensors[key] = seeded_tensor(seed_prefix + key, shape, getattr(torch, dtype))
    return tensors


def assert_file_holds(path: Path, expected: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> None:
    # One tensor at a time: a full-size file read whole beside the originals would add a gigabyte to the peak.
    with safe_open(str(path), framework="pt") as stored:
        assert set(stored.keys()) == expected.keys() | extras.keys()
        for key, value in (expected | extras).items():
            tensor = stored.get_tensor(key)
            assert tensor.dtype == value.dtype and torch.equal(tensor, value), key


@pytest.mark.slow
def test_generator_from_official_stylegan2_file(fixtures_dir, tmp_path):
    g_ema = official_tensors(fixtures_dir, "stylegan2-ffhq-config-f", "g_ema.")
    mean_w = torch.randn(512)
    torch.save({"g_ema": g_ema, "latent_avg": mean_w, "g": {}, "d": {}}, tmp_path / "stylegan2-ffhq-config-f.pt")
    path = io.convert("generator", tmp_path / "stylegan2-ffhq-config-f.pt", tmp_path / "generator.safetensors")
    assert_file_holds(path, g_ema, {"latent_avg": mean_w})
    model, loaded_mean_w = io.load_generator(path)
    assert torch.equal(loaded_mean_w, mean_w)
    assert_same_state(model, g_ema)


@pytest.mark.slow
def test_publish_dry_run_round_trips_the_official_files(fixtures_dir, tmp_path):
    """Random full-size weights in the official containers -> publish --dry-run -> identical tensors."""
    from falco.bank import build_bank
    from falco.config import BankConfig

    originals = tmp_path / "originals"
    originals.mkdir()
    mean_w = torch.randn(512)
    e4e_state = official_tensors(fixtures_dir, "e4e_ffhq_encode")
    torch.save({"state_dict": e4e_state, "latent_avg": mean_w.expand(18, -1).clone(),
                "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "start_from_latent_avg": True}},
               originals / "e4e_ffhq_encode.pt")
    del e4e_state
    torch.save(official_tensors(fixtures_dir, "model_ir_se50"), originals / "model_ir_se50.pth")
    clip = official_tensors(fixtures_dir, "farl_vit_b16")
    clip["mim_head.weight"] = torch.randn(8, 8)   # pre-training extras the loaders ignore
    torch.save({"state_dict": clip}, originals / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth")
    del clip

    generator, bank_mean_w = io.load_generator(originals / "e4e_ffhq_encode.pt")
    farl = io.load_farl(originals / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth")
    build_bank(originals / "bank.safetensors", 1, generator, bank_mean_w, farl,
               BankConfig(size=1, chunk_rows=1, render_batch=1), progress=False)
    del generator, farl

    out = tmp_path / "hub"
    manifest = publish("someone/falco-weights", e4e=originals / "e4e_ffhq_encode.pt",
                       arcface=originals / "model_ir_se50.pth",
                       farl=originals / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth",
                       landmarks=packaged_dlib_model(ARTIFACTS["dlib_landmarks"]),
                       recognition=packaged_dlib_model(ARTIFACTS["dlib_recognition"]),
                       bank=originals / "bank.safetensors", out=out, dry_run=True)

    assert sorted(p.name for p in out.iterdir()) == sorted([*ARTIFACTS.values(), MANIFEST_NAME, "README.md"])
    assert manifest == Manifest.load(out / MANIFEST_NAME)
    assert manifest.repo_id == "someone/falco-weights" and manifest.revision is None
    for artifact in manifest.artifacts.values():
        assert artifact.size == (out / artifact.filename).stat().st_size
        assert artifact.sha256 == sha256_file(out / artifact.filename)
    card = (out / "README.md").read_text()
    assert "NVIDIA" in card and all(a.sha256 in card for a in manifest.artifacts.values())

    # The tensors as the official containers hold them (mapped from the files, not made a second time).
    def official(name: str) -> dict[str, torch.Tensor]:
        return torch.load(originals / name, map_location="cpu", weights_only=True, mmap=True)

    e4e_state = official("e4e_ffhq_encode.pt")["state_dict"]
    assert_file_holds(out / ARTIFACTS["e4e"], {k[8:]: v for k, v in e4e_state.items() if k.startswith("encoder.")},
                      {"latent_avg": mean_w.expand(18, -1)})
    assert_file_holds(out / ARTIFACTS["generator"],
                      {k[8:]: v for k, v in e4e_state.items() if k.startswith("decoder.")}, {"latent_avg": mean_w})
    del e4e_state
    assert_file_holds(out / ARTIFACTS["arcface"], official("model_ir_se50.pth"), {})
    clip = official("FaRL-Base-Patch16-LAIONFace20M-ep64.pth")["state_dict"]
    assert_file_holds(out / ARTIFACTS["farl"], {k: v for k, v in clip.items() if k.startswith("visual.")}, {})
    assert (out / ARTIFACTS["fake_bank"]).read_bytes() == (originals / "bank.safetensors").read_bytes()


def test_publish_builds_the_bank_from_the_converted_networks(tiny_weights, tmp_path):
    """Without --bank, publishing builds the bank from the networks it just converted."""
    import shutil

    from falco.bank import FakeBank
    from falco.weights.assemble import build_bank_from_folder
    from falco.weights.publish import _check_bank

    folder = tmp_path / "hub"
    shutil.copytree(tiny_weights, folder)
    (folder / ARTIFACTS["fake_bank"]).unlink()
    build_bank_from_folder(folder, 5, "cpu")
    bank = FakeBank.load(folder / ARTIFACTS["fake_bank"])
    assert len(bank) == 5
    _check_bank(folder / ARTIFACTS["fake_bank"], folder / ARTIFACTS["generator"], folder / ARTIFACTS["farl"])
