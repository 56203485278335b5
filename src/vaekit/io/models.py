"""Saved models: a folder with ``config.json`` and ``model.safetensors``. Nothing is pickled."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vaekit.config import to_dict
from vaekit.errors import VaekitError
from vaekit.io import convert
from vaekit.io.atomic import save_tensors, write_folder, write_json
from vaekit.io.layout import CONFIG_NAME, WEIGHTS_NAME, resolve_model_dir
from vaekit.models import create_model
from vaekit.version import __version__


def save_model(model: nn.Module, path: str | Path) -> Path:
    """The model's folder: for a model that is a diffusers class inside (RAE), that class's own folder
    (``save_pretrained``), which diffusers loads unchanged and ``load_model`` wraps; else vaekit's. diffusers
    writes config.json before the weights, so its folder is written into a temporary sibling and renamed into
    place (``io.atomic.write_folder``; other files of a folder replaced are kept): a kill leaves the previous
    folder or the new one, never a config without its weights."""
    path = Path(path)
    if saves_as_diffusers(model):
        return write_folder(path, model.save_pretrained, keep_others=True)
    return save_state(model, path)


def write_model(model: nn.Module, folder: str | Path) -> Path:
    """``save_model``'s files written straight into ``folder`` (one that is itself a temporary folder)."""
    return Path(model.save_pretrained(folder)) if saves_as_diffusers(model) else save_state(model, folder)


def saves_as_diffusers(model: nn.Module) -> bool:
    """Whether ``save_model`` writes the model as a diffusers folder (a wrapped diffusers class, not vaekit's)."""
    return callable(getattr(model, "save_pretrained", None))


def save_state(model: nn.Module, path: str | Path) -> Path:
    """vaekit's folder of the model as it is: its registry name, config and state dict. A checkpoint holds
    this form whatever the model, so a resumed run restores the model it saved."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / WEIGHTS_NAME, model.state_dict(), metadata={"format": "pt"})
    write_json(path / CONFIG_NAME, {"_vaekit_model": model.registry_name, "_vaekit_version": __version__,
                                    **to_dict(model.config)})
    return path


def write_latent_scale(model_dir: str | Path, norm) -> Path:
    """Record a latent normalisation (``models.latent_scale.LatentNorm``) in a saved model's ``config.json``
    (a vaekit or a diffusers folder), in place and atomically; the weights are untouched."""
    path = Path(model_dir) / CONFIG_NAME
    config = json.loads(path.read_text())
    if "_vaekit_model" not in config and config.get("_class_name") not in ("AutoencoderKL", "VQModel"):
        raise VaekitError(f"{path} is neither a vaekit nor a diffusers AutoencoderKL/VQModel config")
    write_json(path, {**config, "scaling_factor": norm.scaling_factor, "shift_factor": norm.shift_factor,
                      "latents_mean": None if norm.latents_mean is None else list(norm.latents_mean),
                      "latents_std": None if norm.latents_std is None else list(norm.latents_std)})
    return path


def write_config_fields(model_dir: str | Path, fields: dict) -> Path:
    """Set ``fields`` in a diffusers folder's ``config.json``, in place and atomically, where the class reads
    them at ``from_pretrained`` (a wrapped family's own normalisation fields); the weights are untouched."""
    path = Path(model_dir) / CONFIG_NAME
    config = json.loads(path.read_text())
    if config.get("_class_name") is None or "_vaekit_model" in config:
        raise VaekitError(f"{path} is not a diffusers model config")
    missing = sorted(set(fields) - set(config))
    if missing:
        raise VaekitError(f"{path} has no {', '.join(missing)}: its {config['_class_name']} does not read them")
    write_json(path, {**config, **fields})
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu", **config_overrides) -> nn.Module:
    """Load a model, in eval mode, from any of:

    - a vaekit model folder (``config.json`` + ``model.safetensors``) or run directory;
    - a diffusers ``AutoencoderKL`` or ``VQModel`` folder, as it is (``diffusion_pytorch_model.safetensors``/
      ``.bin``), into vaekit's own model; a folder of any other diffusers image autoencoder (TAESD, DC-AE,
      FLUX.2, Qwen-Image, Wan, HunyuanImage, RAE, the asymmetric and consistency decoders) wrapped, unchanged,
      behind the same interface (``models.diffusers_autoencoders``);
    - an original LDM/CompVis checkpoint (``.ckpt``, ``.safetensors``; a full Stable Diffusion checkpoint
      too: its ``first_stage_model`` is taken);
    - a Hugging Face hub name (``owner/name``, ``owner/name/subfolder``): the cache first, then a download.

    ``config_overrides`` set what weights do not record (e.g. ``scaling_factor``, ``norm_num_groups``).
    """
    if not Path(path).expanduser().exists() and HUB_NAME.match(str(path)):
        path = locate(str(path))

    path = Path(path)
    if path.is_file():
        name, fields, state = convert.load_single_file(path, config_overrides)
        return _with_weights(create_model(name, **fields), state, path, device)
    model_dir = resolve_model_dir(path)
    try:
        config = json.loads((model_dir / CONFIG_NAME).read_text())
    except json.JSONDecodeError as err:
        raise VaekitError(f"{model_dir / CONFIG_NAME} is not valid JSON ({err}); the model folder is damaged") from None
    if config.get("_class_name") in convert.DIFFUSERS_CLASSES:
        fields = {**convert.config_from_diffusers(config, str(model_dir)), **config_overrides}
        weights = next((model_dir / name for name in convert.DIFFUSERS_WEIGHTS if (model_dir / name).is_file()), None)
        if weights is None:  # a folder holding one variant's weights only (fp16, as hub repositories ship them)
            from vaekit.models.diffusers_autoencoders import weights_variant

            variant = weights_variant(model_dir)
            weights = model_dir / f"diffusion_pytorch_model.{variant}.safetensors" if variant else None
        if weights is None:
            raise VaekitError(f"{model_dir} is a diffusers {config['_class_name']} folder without weights "
                              f"({' or '.join(convert.DIFFUSERS_WEIGHTS)})")
        state = convert.normalise_diffusers_keys(convert.read_state_dict(weights))
        model = create_model(convert.DIFFUSERS_CLASSES[config["_class_name"]], **fields)
        return _with_weights(model, state, weights, device)
    if config.get("_class_name") is not None and "_vaekit_model" not in config:  # another diffusers class
        from vaekit.models.diffusers_autoencoders import load_wrapped

        return load_wrapped(model_dir, config["_class_name"], device)
    name = config.pop("_vaekit_model", None)
    if name is None:
        raise VaekitError(f"{model_dir / CONFIG_NAME} is neither a vaekit nor a diffusers autoencoder config")
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


# ---------------------------------------------------------------------- pretrained sources (model.init_from)


HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)?$")
HUB_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "model.safetensors")
VARIANT_WEIGHTS = "diffusion_pytorch_model.*.safetensors"
"""A variant's weights (``.fp16.``, ``.bf16.``): fetched only when a repository has no plain ones."""


def _variant_weights(repo: str, subfolder: str, found: Path) -> Path:
    """A hub folder with a config and no plain weights: many repositories ship only a variant's
    (``diffusion_pytorch_model.fp16.safetensors``); fetch those (cache first), which the loader reads in
    float32 (``weights_variant``)."""
    from huggingface_hub import snapshot_download

    pattern = f"{subfolder}/{VARIANT_WEIGHTS}" if subfolder else VARIANT_WEIGHTS
    try:
        folder = snapshot_download(repo, allow_patterns=[pattern], local_files_only=True)
        if not any((Path(folder) / subfolder).glob(VARIANT_WEIGHTS)):
            raise FileNotFoundError(pattern)
    except Exception:  # not in the cache: the network
        try:
            folder = snapshot_download(repo, allow_patterns=[pattern])
        except Exception as err:
            raise VaekitError(f"{repo}: the hub repository has a config.json but its weights could not be "
                              f"downloaded ({type(err).__name__}); pass the downloaded folder's path") from err
    return Path(folder) / subfolder if subfolder else Path(folder)


def locate(source: str) -> Path:
    """A local path for ``source``: as given when it exists, else from the Hugging Face hub (cache first)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not HUB_NAME.match(source):
        raise VaekitError(f"{source}: no such file or folder (nor a Hugging Face hub name such as "
                          "stabilityai/sd-vae-ft-ema)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    parts = source.split("/")
    repo, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    patterns = [f"{subfolder}/{name}" if subfolder else name for name in HUB_FILES]
    try:
        folder = snapshot_download(repo, allow_patterns=patterns, local_files_only=True)
    except Exception:  # not in the cache (the hub library raises several types): try the network
        try:
            folder = snapshot_download(repo, allow_patterns=patterns)
        except Exception as err:
            raise VaekitError(
                f"{source}: not in the Hugging Face cache ({HF_HUB_CACHE}) and the download failed "
                f"({type(err).__name__}). On a machine with internet run `huggingface-cli download {repo} "
                f"{' '.join(patterns[:2])}` and copy the cache over (or set HF_HOME), or pass the downloaded "
                "folder's path") from err
    found = Path(folder) / subfolder if subfolder else Path(folder)
    if (found / "config.json").is_file() and not any((found / name).is_file() for name in HUB_FILES[1:]):
        found = _variant_weights(repo, subfolder, found)
    if not (found / "config.json").is_file():
        raise VaekitError(f"{source}: the hub repository has no config.json"
                          + (f" in {subfolder}/" if subfolder else " (is the model in a subfolder? owner/name/vae)"))
    return found


def in_hub_cache(path: str | Path) -> bool:
    """Whether ``path`` lies inside the Hugging Face cache (files there are the hub's: never edited)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(path).resolve().is_relative_to(Path(HF_HUB_CACHE).resolve())


def load_source(source: str) -> nn.Module:
    """The pretrained model ``source`` names (``model.init_from``), on the CPU, with every tensor checked."""
    try:
        return load_model(locate(source))
    except VaekitError as err:
        raise VaekitError(f"model.init_from {err}") from None
