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

from torch import nn

from vaekit.config import ComponentConfig, to_dict
from vaekit.errors import ConfigError
from vaekit.io.models import load_source
from vaekit.registry import MODELS

TRAINING_SETTINGS = {"gradient_checkpointing"}
"""Model fields that are not architecture: they may differ from the source's."""


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
