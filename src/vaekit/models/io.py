"""Saved models: a folder with ``config.json`` and ``model.safetensors``. Nothing is pickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vaekit import __version__
from vaekit.config import build_dataclass, to_dict
from vaekit.errors import VaekitError
from vaekit.fileio import save_tensors, write_json
from vaekit.registry import MODELS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def create_model(name: str, **config) -> nn.Module:
    """Build a registered model or preset, e.g. ``create_model("mlp-vae", input_shape=(1, 16, 16))``."""
    entry = MODELS.get(name)
    return entry.obj(build_dataclass(entry.config_cls, {**entry.defaults, **config}, "model"))


def save_model(model: nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / WEIGHTS_NAME, model.state_dict(), metadata={"format": "pt"})
    write_json(path / CONFIG_NAME, {"_vaekit_model": model.registry_name, "_vaekit_version": __version__,
                                    **to_dict(model.config)})
    return path


def write_latent_scale(model_dir: str | Path, scaling_factor: float, shift_factor: float | None) -> Path:
    """Record a latent scale in a saved model's ``config.json`` (a vaekit or a diffusers folder), in place
    and atomically; the weights are untouched."""
    path = Path(model_dir) / CONFIG_NAME
    config = json.loads(path.read_text())
    if "_vaekit_model" not in config and config.get("_class_name") != "AutoencoderKL":
        raise VaekitError(f"{path} is neither a vaekit nor a diffusers AutoencoderKL config")
    write_json(path, {**config, "scaling_factor": scaling_factor, "shift_factor": shift_factor})
    return path


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder itself, or the model inside a run directory (its final ``model/``, else its latest
    checkpoint, so a stopped run can be inspected)."""
    path = Path(path)
    if not path.exists():
        raise VaekitError(f"no such model folder or run directory: {path}")
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "model" / CONFIG_NAME).is_file():
        return path / "model"
    from vaekit.training.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(path / "checkpoints")
    if checkpoint is not None:
        return checkpoint
    raise VaekitError(
        f"{path} is neither a saved model folder ({CONFIG_NAME} + {WEIGHTS_NAME}) nor a vaekit run directory "
        "(model/ or checkpoints/ inside); pass the folder that `vaekit train` printed"
    )


def load_model(path: str | Path, device: str | torch.device = "cpu", **config_overrides) -> nn.Module:
    """Load a model, in eval mode, from any of:

    - a vaekit model folder (``config.json`` + ``model.safetensors``) or run directory;
    - a diffusers ``AutoencoderKL`` folder, as it is (``diffusion_pytorch_model.safetensors``/``.bin``);
    - an original LDM/CompVis checkpoint (``.ckpt``, ``.safetensors``; a full Stable Diffusion checkpoint
      too: its ``first_stage_model`` is taken). ``config_overrides`` set what weights do not record
      (e.g. ``scaling_factor``, ``norm_num_groups``).
    """
    from vaekit.models import convert

    path = Path(path)
    if path.is_file():
        fields, state = convert.load_single_file(path, config_overrides)
        return _with_weights(create_model("autoencoder-kl", **fields), state, path, device)
    model_dir = resolve_model_dir(path)
    try:
        config = json.loads((model_dir / CONFIG_NAME).read_text())
    except json.JSONDecodeError as err:
        raise VaekitError(f"{model_dir / CONFIG_NAME} is not valid JSON ({err}); the model folder is damaged") from None
    if config.get("_class_name") == "AutoencoderKL":
        fields = {**convert.config_from_diffusers(config, str(model_dir)), **config_overrides}
        weights = next((model_dir / name for name in convert.DIFFUSERS_WEIGHTS if (model_dir / name).is_file()), None)
        if weights is None:
            raise VaekitError(f"{model_dir} is a diffusers AutoencoderKL folder without weights "
                              f"({' or '.join(convert.DIFFUSERS_WEIGHTS)})")
        state = convert.normalise_diffusers_keys(convert.read_state_dict(weights))
        return _with_weights(create_model("autoencoder-kl", **fields), state, weights, device)
    name = config.pop("_vaekit_model", None)
    if name is None:
        raise VaekitError(f"{model_dir / CONFIG_NAME} is neither a vaekit nor a diffusers AutoencoderKL config")
    fields = {key: value for key, value in config.items() if not key.startswith("_")}
    model = create_model(name, **{**fields, **config_overrides})
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise VaekitError(f"{model_dir} has {CONFIG_NAME} but no {WEIGHTS_NAME}: copy the weights file beside it")
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError) as err:
        raise VaekitError(f"{weights} cannot be read ({err}); the file is damaged or incomplete") from None
    return _with_weights(model, state, weights, device)


def _with_weights(model: nn.Module, state: dict[str, torch.Tensor], source: Path, device) -> nn.Module:
    """Load ``state`` into ``model`` after checking every name and shape, with an error that lists what
    does not fit (up to ten of each kind, and how many more)."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    if expected != found:
        groups = {
            "missing": sorted(expected.keys() - found.keys()),
            "unexpected": sorted(found.keys() - expected.keys()),
            "of the wrong shape": [f"{k} {list(found[k])} (the config needs {list(expected[k])})"
                                   for k in sorted(expected.keys() & found.keys()) if expected[k] != found[k]],
        }
        problems = [f"{len(names)} {kind}: {', '.join(names[:10])}" + (f" (+{len(names) - 10} more)" if len(names) > 10 else "")
                    for kind, names in groups.items() if names]
        raise VaekitError(f"{source} does not fit the model in its config; tensors {'; '.join(problems)}")
    model.load_state_dict(state)
    return model.to(device).eval()
