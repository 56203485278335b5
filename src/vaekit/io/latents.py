"""Latent files. ``vaekit encode`` writes one safetensors file of latents with the source names and image
sizes; ``vaekit export-latents`` writes a directory of shards (see ``vaekit.latents``):

    export.json                 what is being exported (model, source, settings, item count); written first
    shard-00000.safetensors     ``mean.<index>`` (and ``logvar.<index>``) for items [0, S), metadata: the
                                items (index, source, image size), the skipped ones, the model's fingerprint
    manifest.json               written last, after every input was checked to be in exactly one shard
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open

from vaekit.errors import VaekitError
from vaekit.io.atomic import save_tensors
from vaekit.models.latent_scale import LatentNorm


FOLDED_NORM = "folded_norm"
"""The metadata key of a latents file's normalisation where it folds patches (``patch_size`` > 1)."""


def save_latents(path: str | Path, latents: list[torch.Tensor], names: list[str], sizes: list[tuple[int, int]],
                 norm: LatentNorm, logvars: list[torch.Tensor] | None = None) -> Path:
    """Latents of any sizes, ``(c, h, w)`` each, keyed ``latent.<i>`` (and their log-variances
    ``logvar.<i>``, when given); names, image sizes and the normalisation applied (``norm``) are in the
    metadata (JSON)."""
    # folded latents record their normalisation under another key: readers from before patch_size read "norm"
    # without it (and would decode them unfolded), so they refuse a file without "norm" instead
    metadata = {"names": json.dumps(names), "sizes": json.dumps([list(s) for s in sizes]),
                FOLDED_NORM if norm.patch_size > 1 else "norm": json.dumps(norm.to_dict())}
    tensors = {f"latent.{i}": z.contiguous() for i, z in enumerate(latents)}
    tensors.update({f"logvar.{i}": v.contiguous() for i, v in enumerate(logvars or [])})
    save_tensors(path, tensors, metadata=metadata)
    return Path(path)


class LatentsFile(NamedTuple):
    latents: list[torch.Tensor]
    logvars: list[torch.Tensor] | None
    names: list[str]
    sizes: list[tuple[int, int]]
    norm: LatentNorm


def load_latents(path: str | Path) -> LatentsFile:
    path = Path(path)
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            names, sizes = json.loads(metadata["names"]), json.loads(metadata["sizes"])
            latents = [f.get_tensor(f"latent.{i}") for i in range(len(names))]
            logvars = ([f.get_tensor(f"logvar.{i}") for i in range(len(names))]
                       if names and "logvar.0" in f.keys() else None)
            # files from before per-channel statistics record the two numbers alone
            recorded = json.loads(metadata.get(FOLDED_NORM) or metadata["norm"]) if (
                FOLDED_NORM in metadata or "norm" in metadata) else {
                "scaling_factor": float(metadata["scaling_factor"]), "shift_factor": float(metadata["shift_factor"])}
            norm = LatentNorm.from_manifest(recorded)
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
        raise VaekitError(f"{path} is not a latents file written by `vaekit encode` ({err})") from None
    return LatentsFile(latents, logvars, names, [tuple(s) for s in sizes], norm)


FORMAT = "vaekit-latents/1"
"""An export of latents as the model's encode gives them (normalised, nothing folded)."""
FOLDED_FORMAT = "vaekit-latents/2"
"""An export whose latents have p × p neighbourhoods folded into channels (``patch_size`` p > 1, FLUX.2): readers
of ``vaekit-latents/1`` know nothing of ``patch_size`` and would decode them unfolded, so they must refuse it."""
FORMATS = (FORMAT, FOLDED_FORMAT)
"""The formats read here (a ``vaekit-latents/1`` record with ``patch_size`` > 1, written before the second
format, is read as the record says)."""
SPEC_FILE, MANIFEST_FILE = "export.json", "manifest.json"


def format_for(patch_size: int) -> str:
    """The format of an export whose latents are folded by ``patch_size``: the first where nothing is folded, so
    that what older readers read correctly keeps the format they read."""
    return FOLDED_FORMAT if patch_size > 1 else FORMAT


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def write_shard(path: Path, k: int, tensors: dict[str, torch.Tensor], items: list[dict], skipped: list[dict],
                fingerprint: str, fmt: str = FORMAT) -> None:
    """Shard ``k``, atomically (a kill leaves no half-written shard under its name)."""
    metadata = {"format": fmt, "shard": str(k), "items": json.dumps(items), "skipped": json.dumps(skipped),
                "model_fingerprint": fingerprint}
    save_tensors(path, tensors, metadata=metadata)


def open_shard(path: Path):
    """A memory-mapped handle whose ``get_tensor(name)`` reads one tensor."""
    return safe_open(path, "pt")


def read_shard_metadata(path: Path) -> dict:
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
        return {"items": json.loads(metadata["items"]), "skipped": json.loads(metadata["skipped"]),
                "model_fingerprint": metadata.get("model_fingerprint")}
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
        raise VaekitError(f"{path} is not a shard written by vaekit export-latents ({err})") from None
