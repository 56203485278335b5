"""Latent files: one safetensors file of latents with the source names and image sizes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from vaekit.errors import VaekitError
from vaekit.fileio import save_tensors


def save_latents(path: str | Path, latents: list[torch.Tensor], names: list[str], sizes: list[tuple[int, int]],
                 scaling_factor: float, shift_factor: float | None) -> Path:
    """Latents of any sizes, ``(c, h, w)`` each, keyed ``latent.<i>``; names, image sizes and the scaling
    applied are in the metadata (JSON)."""
    metadata = {"names": json.dumps(names), "sizes": json.dumps([list(s) for s in sizes]),
                "scaling_factor": repr(scaling_factor), "shift_factor": repr(shift_factor or 0.0)}
    save_tensors(path, {f"latent.{i}": z.contiguous() for i, z in enumerate(latents)}, metadata=metadata)
    return Path(path)


def load_latents(path: str | Path) -> tuple[list[torch.Tensor], list[str], list[tuple[int, int]], float, float]:
    path = Path(path)
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            names, sizes = json.loads(metadata["names"]), json.loads(metadata["sizes"])
            latents = [f.get_tensor(f"latent.{i}") for i in range(len(names))]
            return latents, names, [tuple(s) for s in sizes], float(metadata["scaling_factor"]), float(metadata["shift_factor"])
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
        raise VaekitError(f"{path} is not a latents file written by `vaekit encode` ({err})") from None
