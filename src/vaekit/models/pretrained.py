"""Starting a run from pretrained weights (``model.init_from``).

The source may be a diffusers ``AutoencoderKL`` folder, an original SD/LDM single file (``.ckpt`` read
with ``torch.load(weights_only=True)``, ``.safetensors``), a vaekit model folder or run directory, or a
Hugging Face hub name (``stabilityai/sd-vae-ft-ema``; ``owner/name/subfolder`` for a model inside a
pipeline repository), looked up in the Hugging Face cache and downloaded when the machine is online.

The architecture comes from the source: a ``model.*`` value the config spells out that differs from the
source's is an error naming both. Every tensor must fit (``load_model`` lists the ones that do not).
The source's scaling and shift factors come with it, until training measures new ones.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from torch import nn

from vaekit.config import ComponentConfig, to_dict
from vaekit.errors import ConfigError, VaekitError
from vaekit.registry import MODELS

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)?$")
HUB_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "model.safetensors")
TRAINING_SETTINGS = {"gradient_checkpointing"}
"""Model fields that are not architecture: they may differ from the source's."""


def locate(source: str) -> Path:
    """A local path for ``source``: as given when it exists, else from the Hugging Face hub (cache first)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not HUB_NAME.match(source):
        raise VaekitError(f"model.init_from {source}: no such file or folder (nor a Hugging Face hub name such as "
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
                f"model.init_from {source}: not in the Hugging Face cache ({HF_HUB_CACHE}) and it cannot be downloaded "
                f"here ({type(err).__name__}). On a machine with internet run `huggingface-cli download {repo} "
                f"{' '.join(patterns[:2])}` and copy the cache over (or set HF_HOME), or pass the downloaded "
                "folder's path") from err
    found = Path(folder) / subfolder if subfolder else Path(folder)
    if not (found / "config.json").is_file():
        raise VaekitError(f"model.init_from {source}: the hub repository has no config.json"
                          + (f" in {subfolder}/" if subfolder else " (is the model in a subfolder? owner/name/vae)"))
    return found


def source_model_name(source: str) -> str:
    """The registered model a source holds, read from its config alone (no weights): a vaekit folder or
    run records it; diffusers folders, LDM files and hub names hold KL autoencoders."""
    import json

    from vaekit.models.io import CONFIG_NAME, resolve_model_dir

    path = Path(source).expanduser()
    if path.is_dir():
        try:
            config = json.loads((resolve_model_dir(path) / CONFIG_NAME).read_text())
        except (VaekitError, OSError, ValueError):
            return "autoencoder-kl"  # unreadable: loading the source later says what is wrong
        return config.get("_vaekit_model", "autoencoder-kl")
    return "autoencoder-kl"


def load_source(source: str) -> nn.Module:
    """The pretrained model ``source`` names, on the CPU, with every tensor checked."""
    from vaekit.models.io import load_model

    return load_model(locate(source))


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


def resolve_init_from(model: ComponentConfig) -> tuple[ComponentConfig, nn.Module]:
    """The model section with the source's architecture, and the loaded source. A spelled-out
    ``model.name`` or field that disagrees with the source is an error naming both values."""
    source = load_source(model.init_from)
    source_fields = to_dict(source.config)
    if "name" in model.given:
        entry = MODELS.get(model.name)
        if not isinstance(source, entry.obj):
            raise ConfigError(f"model.name={model.name} conflicts with model.init_from {model.init_from}, which holds a "
                              f"{source.registry_name}; leave model.name out (the architecture comes from the source)")
        for key, value in entry.defaults.items():
            if key not in model.given and _comparable(value) != _comparable(source_fields.get(key)):
                raise ConfigError(f"model.name={model.name} has {key}={_comparable(value)}, but model.init_from "
                                  f"{model.init_from} has {key}={source_fields.get(key)}; leave model.name out")
    for key in sorted(model.given - {"name", "init_from"} - TRAINING_SETTINGS):
        ours, theirs = _comparable(getattr(model.params, key)), source_fields.get(key)
        if ours != theirs:
            raise ConfigError(f"model.{key}={ours} conflicts with model.init_from {model.init_from}, which has "
                              f"{key}={theirs}; the architecture comes from the source: leave model.{key} out")
    kept = {key: getattr(model.params, key) for key in model.given & TRAINING_SETTINGS}
    params = dataclasses.replace(source.config, **kept)
    return dataclasses.replace(model, name=source.registry_name, params=params), source
