"""Checkpoint IO for the four networks: our safetensors files and the official checkpoints.

Our format: one ``.safetensors`` file per network holding its state_dict (official key
layout, prefix stripped) plus any extra tensor it needs (``latent_avg``); the metadata
names the network and holds its constructor config as JSON, so ``Cls(**config)``
rebuilds the exact architecture, tiny test configs included.

Which reader runs is decided by the file name, never by the content: ``.safetensors``
goes to safetensors alone, and only ``.pt``/``.pth``/``.ckpt`` files (the official
releases, on the user's own disk) go to ``torch.load(weights_only=True)``.  Everything
the Hub serves is ``.safetensors``, so nothing downloaded ever reaches an unpickler.
FaRL has a second public source, a ``transformers`` CLIP conversion: its key layout is
named by the caller (``layout="transformers-clip"``), never guessed, and it too is read
from ``.safetensors`` alone.

Official checkpoints carry no config: the loaders infer what the file implies (e4e's
n_styles) and default the rest to the released architecture; ``config`` overrides that
(tiny test networks in official containers).  Our own files carry their config, and a
``config`` that contradicts it is refused rather than silently ignored.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open

from falco.errors import WeightsError
from falco.models import NETWORKS
from falco.models.arcface import ArcFace
from falco.models.e4e import Encoder4Editing
from falco.models.farl import FaRL
from falco.models.stylegan2 import Generator
from falco.output_files import save_tensors

FORMAT = "falco-network-v1"
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
LAYOUTS = ("official", "transformers-clip")   # "official" covers our own files too
MEAN_W_SAMPLES = 10_000   # z samples behind a mean w when a checkpoint lacks one (rosinality uses 4096+)

StateDict = dict[str, torch.Tensor]


def _exists(path: str | Path, network: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"The {network} weights file {path} does not exist.")
    return path


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise WeightsError(f"{path.name} is not a readable safetensors file ({err}).") from err


def _read(path: str | Path, network: str) -> tuple[StateDict | object, dict | None]:
    """(tensors, config) of our safetensors file, or (unpickled object, None) of an official one."""
    path = _exists(path, network)
    if path.suffix == ".safetensors":
        tensors, meta = _read_safetensors(path)
        if meta.get("format") != FORMAT or meta.get("network") != network:
            found = meta.get("network") if meta.get("format") == FORMAT else "no FALCO network"
            raise WeightsError(f"{path.name} holds {found}, not the {network} weights.")
        return tensors, json.loads(meta["config"])
    if path.suffix in TORCH_SUFFIXES:
        try:
            return torch.load(path, map_location="cpu", weights_only=True), None
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WeightsError(f"{path.name} cannot be loaded as a plain tensor checkpoint ({reason}).") from err
    raise WeightsError(f"{path.name}: expected a .safetensors file or an official "
                       f"{'/'.join(TORCH_SUFFIXES)} checkpoint for the {network}.")


def _as_json(value: object) -> object:
    return json.loads(json.dumps(value))   # int dict keys -> str, tuples -> lists: as a stored config holds them


def _config(stored: dict | None, inferred: dict, override: dict | None, path: str | Path, network: str) -> dict:
    """Our file's own config, else what the official file implies with ``override`` on top."""
    if stored is None:
        return {**inferred, **(override or {})}
    for key, value in (override or {}).items():
        if _as_json(stored.get(key)) != _as_json(value):
            raise WeightsError(f"{Path(path).name} is a {network} with {key}={stored.get(key)!r}, "
                               f"not the {key}={value!r} asked for.")
    return stored


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _state_dict_of(obj: object, path: str | Path, *candidates: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in candidates:
            if isinstance(obj.get(key), dict):
                return obj[key]
    raise WeightsError(f"{Path(path).name} has no {' or '.join(repr(c) for c in candidates)} entry; "
                       "is it the right checkpoint?")


def check_layout(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], file_name: str,
                 network: str, optional: Callable[[str], bool] = lambda key: False) -> None:
    """A WeightsError unless ``state`` has exactly the keys and shapes of ``expected`` (keys ``optional`` accepts
    may be missing), naming the file and the network and counting what differs."""
    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise WeightsError(f"{file_name} does not match the {network} layout: {len(missing)} missing, "
                           f"{len(unexpected)} unexpected, {len(reshaped)} reshaped keys (e.g. {example}).")


def build_strict(cls: Callable[..., nn.Module], config: dict, state: Mapping[str, torch.Tensor],
                 path: str | Path) -> nn.Module:
    """``cls(**config)`` holding exactly ``state``: WeightsError naming the mismatch unless every key and shape
    matches (no key missing, none unexpected)."""
    try:
        with torch.device("meta"):   # no throwaway random init: the file's tensors become the weights
            model = cls(**config)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{Path(path).name} has an invalid {cls.__name__} config ({err}).") from err
    expected = model.state_dict()
    check_layout(state, expected, Path(path).name, cls.__name__)
    # assign: no second copy of the weights (peak memory while loading), in the module's own dtypes
    model.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()}, strict=True, assign=True)
    return model


@torch.no_grad()
def estimate_mean_w(generator: Generator, samples: int = MEAN_W_SAMPLES, seed: int = 0) -> torch.Tensor:
    """Mean of mapping(z) over fixed standard-normal z: the truncation centre."""
    device = next(generator.parameters()).device
    z = torch.randn(samples, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([generator.mapping(c.to(device)) for c in z.split(1000)]).mean(0)


def _mean_w_from(latent_avg: torch.Tensor) -> torch.Tensor:
    # e4e stores the generator's mean w once per style row; the rows are identical copies.
    t = latent_avg.float().reshape(-1, latent_avg.shape[-1])
    return t[0].clone() if torch.equal(t, t[:1].expand_as(t)) else t.mean(0)


def _latent_avg_rows(latent_avg: torch.Tensor, n_styles: int, path: str | Path) -> torch.Tensor:
    t = latent_avg.float().reshape(-1, latent_avg.shape[-1])
    if t.shape[0] == 1:
        t = t.expand(n_styles, -1)
    if t.shape[0] != n_styles:
        raise WeightsError(f"{Path(path).name}: latent_avg has {t.shape[0]} rows for {n_styles} styles.")
    return t.clone()


def _read_with_latent_avg(path: str | Path, network: str,
                          official: Callable[[object], tuple[Mapping[str, torch.Tensor], dict]],
                          override: dict | None) -> tuple[Mapping[str, torch.Tensor], dict, torch.Tensor | None]:
    """(state, config, latent_avg or None) of a network stored with its ``latent_avg``.

    ``official`` takes an official checkpoint apart into (state, inferred config); its
    ``latent_avg`` sits at the top level, ours beside the weights.
    """
    payload, stored = _read(path, network)
    if stored is not None:
        state = dict(payload)
        latent_avg = state.pop("latent_avg", None)
        return state, _config(stored, {}, override, path, network), latent_avg
    state, inferred = official(payload)
    return state, _config(None, inferred, override, path, network), payload.get("latent_avg")


def load_generator(path: str | Path, device: str | torch.device = "cpu",
                   config: dict | None = None) -> tuple[Generator, torch.Tensor]:
    """(Generator, mean w [style_dim]) from our file, ``stylegan2-ffhq-config-f.pt`` or ``e4e_ffhq_encode.pt``."""
    def official(payload: object) -> tuple[Mapping[str, torch.Tensor], dict]:
        if isinstance(payload, dict) and "g_ema" in payload:
            return payload["g_ema"], {}
        # e4e's checkpoint carries the generator it was trained against
        return _strip(_state_dict_of(payload, path, "state_dict"), "decoder."), {}

    state, config, latent_avg = _read_with_latent_avg(path, "generator", official, config)
    model = build_strict(Generator, config, state, path)
    mean_w = estimate_mean_w(model) if latent_avg is None else _mean_w_from(latent_avg)
    return model.to(device), mean_w.to(device)


def load_e4e(path: str | Path, device: str | torch.device = "cpu",
             config: dict | None = None) -> tuple[Encoder4Editing, torch.Tensor]:
    """(Encoder4Editing, latent_avg [n_styles, style_dim]) from our file or ``e4e_ffhq_encode.pt``."""
    def official(payload: object) -> tuple[Mapping[str, torch.Tensor], dict]:
        state = _strip(_state_dict_of(payload, path, "state_dict"), "encoder.")
        styles = {int(k.split(".")[1]) for k in state if k.startswith("styles.")}
        return state, ({"n_styles": max(styles) + 1} if styles else {})

    state, config, latent_avg = _read_with_latent_avg(path, "e4e", official, config)
    if latent_avg is None:
        raise WeightsError(f"{Path(path).name} has no latent_avg; e4e codes are offsets from it.")
    model = build_strict(Encoder4Editing, config, state, path)
    return model.to(device), _latent_avg_rows(latent_avg, model.config["n_styles"], path).to(device)


def load_arcface(path: str | Path, device: str | torch.device = "cpu", config: dict | None = None) -> ArcFace:
    """ArcFace from our file or ``model_ir_se50.pth`` (a bare state dict)."""
    payload, stored = _read(path, "arcface")
    if stored is None and not isinstance(payload, dict):
        raise WeightsError(f"{Path(path).name} is not a state dict.")
    return build_strict(ArcFace, _config(stored, {}, config, path, "arcface"), payload, path).to(device)


# transformers' CLIP vision keys -> OpenAI CLIP's (ours), as convert_clip_original_pytorch_to_hf.py maps them.
# Attention's q, k, v are one in_proj in OpenAI's layout (rows in that order) and visual_projection
# is an nn.Linear, the transpose of OpenAI's `x @ proj`; both are handled in _farl_from_transformers_clip.
HF_CLIP_VISION = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",   # sic: transformers' spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
HF_CLIP_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                 "self_attn.out_proj": "attn.out_proj"}
HF_CLIP_QKV = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v"}
HF_CLIP_LAYER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
# A full CLIPModel also holds the text tower; old transformers saved the position_ids buffer.
HF_CLIP_NOT_VISUAL = ("text_model.", "text_projection.", "logit_scale")


def _farl_from_transformers_clip(state: Mapping[str, torch.Tensor], path: Path) -> StateDict:
    """Our (OpenAI CLIP) ``visual.*`` state from a transformers CLIPVisionModel[WithProjection] or CLIPModel."""
    ours: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    foreign = []
    for key, value in state.items():
        layer = HF_CLIP_LAYER.fullmatch(key)
        if key.startswith(HF_CLIP_NOT_VISUAL) or key.endswith("embeddings.position_ids"):
            continue
        if key in HF_CLIP_VISION:
            ours[HF_CLIP_VISION[key]] = value
        elif key == "visual_projection.weight":
            ours["visual.proj"] = value.T.contiguous()
        elif layer and layer[2] in HF_CLIP_QKV:
            qkv.setdefault((layer[1], layer[3]), {})[HF_CLIP_QKV[layer[2]]] = value
        elif layer and layer[2] in HF_CLIP_BLOCK:
            ours[f"visual.transformer.resblocks.{layer[1]}.{HF_CLIP_BLOCK[layer[2]]}.{layer[3]}"] = value
        else:
            foreign.append(key)
    if foreign:
        raise WeightsError(f"{path.name} is not a transformers CLIP vision model: {len(foreign)} keys "
                           f"outside its layout (e.g. {foreign[0]}).")
    for (layer, kind), parts in sorted(qkv.items()):
        if sorted(parts) != ["k", "q", "v"]:
            raise WeightsError(f"{path.name}: layer {layer} has only the {'/'.join(sorted(parts))} "
                               f"attention {kind}, not q, k and v.")
        ours[f"visual.transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in "qkv"])
    return ours


def load_farl(path: str | Path, device: str | torch.device = "cpu", config: dict | None = None,
              layout: str = "official") -> FaRL:
    """FaRL image tower from our file, the official ``FaRL-*.pth`` (CLIP layout under ``state_dict``) or,
    with ``layout="transformers-clip"``, a transformers CLIP conversion's ``model.safetensors``."""
    if layout == "transformers-clip":
        path = _exists(path, "farl")
        if path.suffix != ".safetensors":
            raise WeightsError(f"{path.name}: the transformers CLIP layout is read from .safetensors files only.")
        payload = _farl_from_transformers_clip(_read_safetensors(path)[0], path)
        return build_strict(FaRL, _config(None, {}, config, path, "farl"), payload, path).to(device)
    if layout != "official":
        raise ValueError(f"unknown FaRL layout {layout!r}; expected one of {LAYOUTS}")
    payload, stored = _read(path, "farl")
    if stored is None:
        # The official file also holds the text tower and pre-training heads: only visual.* is ours.
        payload = {k: v for k, v in _state_dict_of(payload, path, "state_dict").items() if k.startswith("visual.")}
    return build_strict(FaRL, _config(stored, {}, config, path, "farl"), payload, path).to(device)


def save_network(path: str | Path, network: str, model: nn.Module,
                 extras: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write ``model``'s state_dict plus ``extras`` as our safetensors file for ``network``."""
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; expected one of {NETWORKS}")
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for key, value in (extras or {}).items():
        if key in tensors:
            raise ValueError(f"extra tensor {key!r} collides with a {network} parameter")
        tensors[key] = value.detach().cpu().float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, tensors, metadata={"format": FORMAT, "network": network, "config": json.dumps(model.config)})
    return path


def convert(network: str, src: str | Path, dst: str | Path, config: dict | None = None,
            layout: str = "official") -> Path:
    """Official checkpoint (or our file) -> our safetensors file for ``network``.

    The weights go through the network itself, so a checkpoint with the wrong layout
    fails here, at publishing time, and not on a user's machine.  ``config`` overrides the
    architecture an official file implies; ``layout`` names FaRL's source key layout.
    """
    if layout not in LAYOUTS or (layout != "official" and network != "farl"):
        raise ValueError(f"unknown layout {layout!r} for the {network}: every network reads {LAYOUTS[0]!r}, "
                         f"FaRL also {LAYOUTS[1:]}")
    if network == "generator":
        model, mean_w = load_generator(src, config=config)
        return save_network(dst, network, model, {"latent_avg": mean_w})
    if network == "e4e":
        model, latent_avg = load_e4e(src, config=config)
        return save_network(dst, network, model, {"latent_avg": latent_avg})
    if network == "arcface":
        return save_network(dst, network, load_arcface(src, config=config))
    if network == "farl":
        return save_network(dst, network, load_farl(src, config=config, layout=layout))
    raise ValueError(f"unknown network {network!r}; expected one of {NETWORKS}")
