"""Where things are on disk: a saved model folder, the checkpoints of a run, and which model a folder holds.

The lowest layer of vaekit's I/O (it imports nothing of vaekit but its errors), so that everything that
opens a model — the config that needs a source's model name, the loaders — shares one description.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vaekit.errors import VaekitError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINT_PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The finished checkpoints ``step-*`` in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    n = len(CHECKPOINT_PREFIX)
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[n:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[n:]))


def latest_checkpoint(directory: str | Path) -> Path | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def remove_unfinished(directory: str | Path) -> None:
    """Delete the temporary folders of checkpoints whose writing was killed."""
    for unfinished in Path(directory).glob(".tmp-" + CHECKPOINT_PREFIX + "*"):
        shutil.rmtree(unfinished, ignore_errors=True)


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
    checkpoint = latest_checkpoint(path / "checkpoints")
    if checkpoint is not None:
        return checkpoint
    raise VaekitError(
        f"{path} is neither a saved model folder ({CONFIG_NAME} + {WEIGHTS_NAME}) nor a vaekit run directory "
        "(model/ or checkpoints/ inside); pass the folder that `vaekit train` printed"
    )


def source_model_name(source: str) -> str:
    """The registered model a source holds, read from its config alone (no weights): a vaekit folder or
    run records it; diffusers folders, LDM files and hub names hold KL autoencoders."""
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            config = json.loads((resolve_model_dir(path) / CONFIG_NAME).read_text())
        except (VaekitError, OSError, ValueError):
            return "autoencoder-kl"  # unreadable: loading the source later says what is wrong
        return config.get("_vaekit_model", "autoencoder-kl")
    return "autoencoder-kl"


def display_name(source: str | Path, taken: set[str]) -> str:
    """A short name for a model in a table, unique among ``taken`` (which it joins): the folder's name — its
    parent's for a run's ``model/`` or ``best/`` and a pipeline's ``vae/`` — or the hub name's last part."""
    path = Path(source)
    name = path.parent.name if path.name in ("model", "best", "vae") and path.parent.name else path.name
    base, k = name or str(source), 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name
