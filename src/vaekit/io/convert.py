"""Weights from elsewhere: diffusers ``AutoencoderKL`` folders, original LDM/CompVis checkpoints, and
export to a folder that ``diffusers.AutoencoderKL.from_pretrained`` loads.

Foreign pickles (``.ckpt``, ``.pt``, ``.bin``) are read with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers; a file it refuses for other objects (a Lightning
checkpoint's callbacks) is read by ``io.safe_pickle``, which keeps the tensors and executes nothing.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vaekit.errors import VaekitError
from vaekit.io.atomic import save_tensors, write_json
from vaekit.io.safe_pickle import load_tensors_only
from vaekit.models.blocks import ConvAutoencoder

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
DIFFUSERS_VERSION = "0.30.0"  # recorded in exported configs; any diffusers from 0.20 on reads them


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or, without running its code, a pickled checkpoint."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # objects beside the weights: keep the tensors, run nothing
            loaded = load_tensors_only(path)
    except (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VaekitError(
            f"cannot read weights from {path}: {first[:300]} (vaekit loads only tensors, never pickled code)"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise VaekitError(f"{path} does not hold a state dict of tensors")
    return loaded


# LDM (CompVis) names -> diffusers names. The decoder's ``up`` list is stored in reverse order there.
_LDM_RULES = [
    (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
    (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm."),
    (r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v)\.", r"\1.mid_block.attentions.0.to_\2."),
    (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0."),
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
]
# Older diffusers checkpoints name the mid-block attention differently.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def ldm_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an LDM/CompVis first-stage state dict (also a full SD checkpoint's ``first_stage_model.``
    part) to diffusers' names; the training loss's weights (``loss.*``) are dropped."""
    if any(k.startswith("first_stage_model.") for k in state):
        state = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    levels = 1 + max((int(m[1]) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.", k))), default=-1)
    out = {}
    for key, value in state.items():
        if key.startswith("loss.") or not key.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv",
                                                                 "quantize"):
            continue
        new = key
        if m := re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.(.*)$", key):
            level = levels - 1 - int(m[1])
            new = (f"decoder.up_blocks.{level}.resnets.{m[3]}" if m[2] == "block"
                   else f"decoder.up_blocks.{level}.upsamplers.0.{m[3]}")
        for pattern, replacement in _LDM_RULES:
            new = re.sub(pattern, replacement, new)
        new = new.replace(".nin_shortcut.", ".conv_shortcut.")
        if ".mid_block.attentions.0.to_" in new and value.ndim == 4:  # 1×1 convs there, linear layers here
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def normalise_diffusers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if "attentions" in parts and parts[-2] in _LEGACY_ATTENTION:
            key = ".".join(parts[:-2] + [_LEGACY_ATTENTION[parts[-2]], parts[-1]])
        out[key] = value
    return out


DIFFUSERS_CLASSES = {"AutoencoderKL": "autoencoder-kl", "VQModel": "vq"}
"""diffusers model classes vaekit loads, and the vaekit model each becomes."""


def config_from_diffusers(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """vaekit AutoencoderKL (or VQModel) config fields from a diffusers ``config.json``."""
    unsupported = [t for t in raw.get("down_block_types", []) if t != "DownEncoderBlock2D"]
    unsupported += [t for t in raw.get("up_block_types", []) if t != "UpDecoderBlock2D"]
    if unsupported or raw.get("act_fn", "silu") != "silu":
        raise VaekitError(f"{where}: only AutoencoderKL with Down/UpEncoderBlock2D and SiLU is supported, "
                          f"found {unsupported or raw.get('act_fn')}")
    sample_size = raw.get("sample_size", 512)
    fields = {name: raw[name] for name in ("in_channels", "out_channels", "block_out_channels", "layers_per_block",
                                           "latent_channels", "norm_num_groups", "mid_block_add_attention",
                                           "use_quant_conv", "use_post_quant_conv", "scaling_factor", "shift_factor",
                                           "latents_mean", "latents_std")
              if raw.get(name) is not None}
    fields["sample_size"] = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
    if raw.get("_class_name") == "VQModel":
        if raw.get("vq_embed_dim") not in (None, raw.get("latent_channels", 3)) or raw.get("norm_type", "group") != "group":
            raise VaekitError(f"{where}: only VQModel with vq_embed_dim = latent_channels and GroupNorm is supported")
        fields["num_embeddings"] = raw.get("num_vq_embeddings", 256)
        fields["latent_channels"] = raw.get("latent_channels", 3)
        for key in ("use_quant_conv", "use_post_quant_conv", "shift_factor", "latents_mean", "latents_std"):
            fields.pop(key, None)
    return fields


def config_from_ldm_weights(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Infer the architecture from (diffusers-named) weights; GroupNorm's group count is not stored in
    weights and is taken as LDM's 32."""
    try:
        levels = 1 + max(int(m[1]) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k)))
        blocks = 1 + max(int(m[1]) for k in state if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k)))
        channels = [state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)]
        return {
            "in_channels": state["encoder.conv_in.weight"].shape[1],
            "out_channels": state["decoder.conv_out.weight"].shape[0],
            "block_out_channels": channels,
            "layers_per_block": blocks,
            "latent_channels": state["decoder.conv_in.weight"].shape[1],
            "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in state,
            "use_quant_conv": "quant_conv.weight" in state,
            "use_post_quant_conv": "post_quant_conv.weight" in state,
            **({"num_embeddings": state["quantize.embedding.weight"].shape[0]}
               if "quantize.embedding.weight" in state else {}),
        }
    except (KeyError, ValueError) as err:
        raise VaekitError(f"these weights are not a KL autoencoder's (missing {err})") from None


def load_single_file(path: Path, overrides: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(vaekit model name, config fields, diffusers-named state) of an LDM/CompVis or taming
    ``.ckpt``/``.safetensors`` (KL or VQ: a ``quantize.embedding`` makes it VQ) or a single diffusers-named
    weights file."""
    state = read_state_dict(path)
    if any(k.startswith(("encoder.down.", "first_stage_model.", "decoder.up.")) for k in state):
        state = ldm_to_diffusers(state)
    state = normalise_diffusers_keys(state)
    fields = config_from_ldm_weights(state)
    name = "vq" if "num_embeddings" in fields else "autoencoder-kl"
    if name == "vq":
        for key in ("use_quant_conv", "use_post_quant_conv"):
            fields.pop(key)
    return name, {**fields, **(overrides or {})}, state


def _check_vq_exportable(config) -> None:
    """diffusers' ``VQModel`` cannot express everything a vaekit VQ model can: refuse rather than change it."""
    if config.l2_normalize:
        raise VaekitError("this VQ model matches l2-normalised codes (model.l2_normalize), which diffusers' VQModel "
                          "cannot express (it would decode other codes): export it as a vaekit folder instead")
    if config.shift_factor is not None or config.latents_mean is not None:
        raise VaekitError("diffusers' VQModel records only a scaling_factor, and this model's latents are shifted or "
                          "normalised per channel: export it as a vaekit folder instead")


def export_diffusers(model: ConvAutoencoder, path: str | Path) -> Path:
    """A folder ``diffusers.AutoencoderKL.from_pretrained(path)`` (``VQModel`` for a VQ model) loads:
    config.json + safetensors weights."""
    path = Path(path)
    config = model.config
    levels = len(config.block_out_channels)
    if model.regularizer == "vq":
        _check_vq_exportable(config)
        write_json(path / "config.json", {
            "_class_name": "VQModel", "_diffusers_version": DIFFUSERS_VERSION,
            "in_channels": config.in_channels, "out_channels": config.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
            "block_out_channels": list(config.block_out_channels), "layers_per_block": config.layers_per_block,
            "act_fn": "silu", "latent_channels": config.latent_channels, "sample_size": config.sample_size,
            "num_vq_embeddings": config.num_embeddings, "norm_num_groups": config.norm_num_groups,
            "vq_embed_dim": config.latent_channels, "scaling_factor": config.scaling_factor, "norm_type": "group",
            "mid_block_add_attention": config.mid_block_add_attention, "lookup_from_codebook": False,
            "force_upcast": False,
        })
        state = {k: v for k, v in model.state_dict().items()  # the EMA and usage statistics are vaekit's own
                 if k.split(".")[-1] not in ("ema_count", "ema_weight", "usage")}
        save_tensors(path / DIFFUSERS_WEIGHTS[0], state, metadata={"format": "pt"})
        return path
    if getattr(config, "latent_permutation", None) is not None:
        raise VaekitError("this autoencoder scrambles its latent positions (model.latent_permutation, a diffusability "
                          "control), which diffusers' AutoencoderKL cannot express")
    write_json(path / "config.json", {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": list(config.block_out_channels),
        "layers_per_block": config.layers_per_block,
        "act_fn": "silu",
        "latent_channels": config.latent_channels,
        "norm_num_groups": config.norm_num_groups,
        "sample_size": config.sample_size,
        "scaling_factor": config.scaling_factor,
        "shift_factor": config.shift_factor,
        "latents_mean": None if config.latents_mean is None else list(config.latents_mean),
        "latents_std": None if config.latents_std is None else list(config.latents_std),
        "force_upcast": True,
        "use_quant_conv": config.use_quant_conv,
        "use_post_quant_conv": config.use_post_quant_conv,
        "mid_block_add_attention": config.mid_block_add_attention,
    })
    save_tensors(path / DIFFUSERS_WEIGHTS[0], model.state_dict(), metadata={"format": "pt"})
    return path
