"""Exported latents as training data for the denoiser (``data.name: latents``).

The latents are used exactly as ``vaekit export-latents`` wrote them — scaled (and shifted) by the factors
in the export's manifest — and read from the memory-mapped shards when a batch asks for them. Labels come
from the exported files' sub-folders when every file is in one (as for the ``folder`` dataset).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from vaekit.data.base import ImageData
from vaekit.data.folder import check_fraction, folder_labels, split_items
from vaekit.errors import ConfigError, VaekitError
from vaekit.registry import DATASETS

log = logging.getLogger("vaekit")

STD_TOLERANCE = 0.25
"""A latent standard deviation outside [1 − tol, 1 + tol] gets a warning: the noise schedule assumes ~1."""


@dataclass
class LatentsConfig:
    """A directory written by ``vaekit export-latents``; a seeded ``test_fraction`` is held out."""

    path: str = ""
    test_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("data.path is required: the directory written by vaekit export-latents")
        check_fraction(self.test_fraction)


class LatentImages(ImageData):
    """One split of an export: ``(latent (c, h, w) float32, label)`` pairs."""

    def __init__(self, latents, items, labels, class_names, name: str):
        super().__init__(labels, len(items), class_names, value_range=(-math.inf, math.inf), name=name)
        self.latents, self.items = latents, [int(i) for i in items]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.latents[self.items[0]]["latent"].shape)

    def __len__(self) -> int:
        return len(self.items)

    def _gather(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        return torch.stack([self.latents[self.items[i]]["latent"].float() for i in indices]), indices

    @property
    def manifest(self) -> dict:
        return self.latents.manifest


def open_latents(path: str):
    """The export at ``path`` as a ``LatentDataset``, checked: a manifest, one latent shape, usable factors."""
    from vaekit.latents import LatentDataset

    latents = LatentDataset(path)
    if len(latents) == 0:
        raise VaekitError(f"{path} holds no latents (every image was skipped: see its manifest.json)")
    factor, shift = latents.scaling_factor, latents.shift_factor
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise VaekitError(f"{path}/manifest.json has scaling_factor {factor!r}; it must be a positive number")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift)):
        raise VaekitError(f"{path}/manifest.json has shift_factor {shift!r}; it must be a number")
    sizes = {tuple(item["size"]) for _, item in latents.items}
    if len(sizes) > 1:
        raise VaekitError(f"{path} mixes latents of {len(sizes)} shapes (images of sizes "
                          f"{', '.join('×'.join(map(str, s)) for s in sorted(sizes)[:3])}...); a denoiser trains on "
                          "one shape: export with --resolution N")
    return latents


def latent_std(latents, count: int = 256) -> float:
    """Standard deviation of (up to ``count``, evenly spread) latents, in float64."""
    picks = sorted({round(i) for i in torch.linspace(0, len(latents) - 1, min(count, len(latents))).tolist()})
    values = torch.cat([latents[i]["latent"].double().flatten() for i in picks])
    return values.std().item()


def check_scale(latents, path: str) -> float:
    """Warn when the exported latents are far from unit standard deviation, naming the factor that fixes it."""
    std = latent_std(latents)
    if abs(std - 1) > STD_TOLERANCE:
        log.warning("the latents in %s have standard deviation %.3g (exported with scaling factor %.5g); the noise "
                    "schedule assumes about 1. A scaling factor of %.5g would give 1: measure it with `vaekit "
                    "calibrate --model VAE --data IMAGES` and export again", path, std, latents.scaling_factor,
                    latents.scaling_factor / std)
    return std


@DATASETS.register("latents", LatentsConfig)
def latents(config: LatentsConfig, split: str) -> LatentImages:
    """Latents written by vaekit export-latents (for the Stage B denoiser); labels from the images' sub-folders."""
    dataset = open_latents(config.path)
    sources = [item["source"] for _, item in dataset.items]
    labels, class_names = folder_labels(sources)
    items = split_items(len(dataset), config.test_fraction, config.seed, split)
    if split == "train":
        check_scale(dataset, config.path)
    return LatentImages(dataset, items, None if labels is None else labels[items], class_names,
                        name=f"latents:{config.path}/{split}")
