"""Training checkpoints: everything a resumed run needs to continue bit for bit.

A checkpoint is a folder ``checkpoints/step-00001234/`` holding

- ``config.json`` + ``model.safetensors``: a saved model (``vaekit.load_model`` opens it);
- ``trainer.safetensors``: optimizer tensors, RNG states, the loss's and EMA's weights;
- ``trainer.json``: step, epoch, position in the epoch, optimizer hyper-parameters, counters, the best
  validation value so far and fp16's loss-scaler state.

It is written into a hidden temporary folder and renamed into place, so a kill at any moment leaves the
previous checkpoints intact and never a half-written one under a ``step-*`` name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from vaekit.errors import VaekitError
from vaekit.io.atomic import save_tensors, write_json
from vaekit.io.layout import checkpoint_name, list_checkpoints
from vaekit.io.models import save_state

def _optimizer_to_files(optimizer: torch.optim.Optimizer, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{param_id}.{key}"] = value
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any], name: str) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optimizer.{name}."
    for tensor_name, value in tensors.items():
        if tensor_name.startswith(prefix):
            param_id, key = tensor_name[len(prefix):].split(".", 1)
            state.setdefault(int(param_id), {})[key] = value
    for name, value in meta["scalars"].items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    # JSON turned tuples (Adam's betas) into lists; optimizers expect what they were given.
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_tensors(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = cuda_state
    for name, generator in generators.items():
        tensors[f"rng.generator.{name}"] = generator.get_state()
    return tensors


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    trainer_state: dict[str, Any],
    modules: dict[str, nn.Module] | None = None,
    keep: int = 2,
    scaler=None,
) -> Path:
    """Write checkpoint ``step`` into ``directory`` and delete all but the newest ``keep``. ``modules``
    are the other stateful parts (the loss with its discriminator, the EMA weights); ``scaler`` is
    fp16's gradient scaler (its scale and growth tracker), when training uses one."""
    directory = Path(directory)
    final = directory / checkpoint_name(step)
    if final.exists():  # this step is already saved (e.g. a stop right after a periodic save)
        return final
    tmp = directory / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_state(model, tmp)
    tensors, optimizer_meta = _rng_tensors(generators), {}
    for name, optimizer in optimizers.items():
        optimizer_tensors, optimizer_meta[name] = _optimizer_to_files(optimizer, name)
        tensors.update(optimizer_tensors)
    for name, module in (modules or {}).items():
        tensors.update({f"module.{name}.{key}": value for key, value in module.state_dict().items()})
    save_tensors(tmp / "trainer.safetensors", tensors)
    scaler_state = {"scaler": scaler.state_dict()} if scaler is not None else {}
    write_json(tmp / "trainer.json", {**trainer_state, "step": step, "optimizers": optimizer_meta, **scaler_state})
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    modules: dict[str, nn.Module] | None = None,
    scaler=None,
) -> dict[str, Any]:
    """Restore model, optimizer, RNG (and loss-scaler) states in place; returns the trainer state saved
    with them."""
    path = Path(path)
    try:
        meta = json.loads((path / "trainer.json").read_text())
        tensors = load_file(path / "trainer.safetensors")
        weights = load_file(path / "model.safetensors")
    except (OSError, json.JSONDecodeError) as err:
        raise VaekitError(f"checkpoint {path} cannot be read ({err}); delete it to resume from the one before") from None
    model.load_state_dict(weights)  # copies into the parameters, on whatever device they live
    optimizer_meta = meta.pop("optimizers")
    scaler_state = meta.pop("scaler", None)
    if scaler is not None and scaler_state is not None:
        scaler.load_state_dict(scaler_state)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(_optimizer_from_files(tensors, optimizer_meta[name], name))
    for name, module in (modules or {}).items():
        prefix = f"module.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    for name, generator in generators.items():
        generator.set_state(tensors[f"rng.generator.{name}"])
    return meta
