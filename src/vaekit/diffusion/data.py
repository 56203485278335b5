"""Exported latents as training data for the denoiser (``data.name: latents``).

The denoiser trains on posterior samples, as latent diffusion does (``models.latent_scale``): each time
an example is read, z = mean + exp(logvar / 2) · ε is drawn from the exported (normalised) mean and
log-variance, with ε from a generator seeded by (seed, epoch, index) — a fresh draw every epoch, the same
draws for any number of loader workers or processes, and exact on resume. A point-mass posterior (VQ)
gives its mean. Shards are memory-mapped and read when a batch asks for them. Labels come from the
exported files' sub-folders when every file is in one (as for the ``folder`` dataset).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from vaekit.data.base import ImageData
from vaekit.data.folder import check_fraction, folder_labels, split_items
from vaekit.data.transforms import example_seed
from vaekit.errors import ConfigError, VaekitError
from vaekit.models.latent_scale import posterior_sample, sample_moments
from vaekit.registry import DATASETS

log = logging.getLogger("vaekit")

STD_TOLERANCE = 0.25
"""A latent standard deviation outside [1 − tol, 1 + tol] gets a warning: the noise schedule assumes ~1."""


@dataclass
class LatentsConfig:
    """A directory written by ``vaekit export-latents``; a seeded ``test_fraction`` is held out."""

    path: str = ""
    test_fraction: float = 0.1
    """Share of the examples held out as the test split (a seeded choice)."""
    seed: int = 0
    """Seeds which examples are held out (and any augmentation)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("data.path is required: the directory written by vaekit export-latents")
        check_fraction(self.test_fraction)


class LatentImages(ImageData):
    """One split of an export: ``(latent (c, h, w) float32, label)`` pairs, each latent a posterior sample
    drawn from (seed, epoch, index)."""

    def __init__(self, latents, items, labels, class_names, name: str, seed: int = 0):
        super().__init__(labels, len(items), class_names, value_range=(-math.inf, math.inf), name=name)
        self.latents, self.items, self.seed = latents, [int(i) for i in items], seed

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.latents[self.items[0]]["latent"].shape)

    def __len__(self) -> int:
        return len(self.items)

    def _sample(self, k: int) -> torch.Tensor:
        index = self.items[k]  # the export's own index: train and test examples never share a draw
        item = self.latents[index]
        mean, logvar = item["latent"].float(), item.get("logvar")
        if logvar is None:
            return mean
        generator = torch.Generator().manual_seed(example_seed(self.seed, self.epoch, index))
        return posterior_sample(mean, logvar.float(), torch.randn(mean.shape, generator=generator))

    def _gather(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        return torch.stack([self._sample(k) for k in indices]), indices

    @property
    def manifest(self) -> dict:
        return self.latents.manifest


def open_latents(path: str):
    """The export at ``path`` as a ``LatentDataset``, checked: a manifest, one latent shape, usable factors."""
    from vaekit.latents import LatentDataset

    latents = LatentDataset(path)  # refuses factors that cannot normalise
    if len(latents) == 0:
        raise VaekitError(f"{path} holds no latents (every image was skipped: see its manifest.json)")
    sizes = {tuple(item["size"]) for _, item in latents.items}
    if len(sizes) > 1:
        raise VaekitError(f"{path} mixes latents of {len(sizes)} shapes (images of sizes "
                          f"{', '.join('×'.join(map(str, s)) for s in sorted(sizes)[:3])}...); a denoiser trains on "
                          "one shape: export with --resolution N")
    return latents


def latent_std(latents, count: int = 256) -> float:
    """Standard deviation of the posterior samples the denoiser trains on, over (up to ``count``, evenly
    spread) exported latents: in closed form from their means and log-variances, float64."""
    picks = sorted({round(i) for i in torch.linspace(0, len(latents) - 1, min(count, len(latents))).tolist()})
    items = [latents[i] for i in picks]
    means = torch.stack([item["latent"] for item in items])
    logvars = torch.stack([item["logvar"] for item in items]) if "logvar" in items[0] else None
    return sample_moments(means, logvars)[1]


def check_scale(latents, path: str) -> float:
    """Warn when the posterior samples of the export are far from unit standard deviation, naming the
    factor that fixes it."""
    std = latent_std(latents)
    if abs(std - 1) > STD_TOLERANCE:
        norm = latents.norm
        fix = (f"A scaling factor of {norm.scaling_factor / std:.5g} would give 1: measure it"
               if not norm.per_channel and norm.patch_size == 1 else "Measure the normalisation")
        log.warning("the posterior samples of the latents in %s have standard deviation %.3g (exported with %s); the "
                    "noise schedule assumes about 1. %s with `vaekit calibrate --model VAE --data IMAGES` and export "
                    "again", path, std, norm.describe(), fix)
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
                        name=f"latents:{config.path}/{split}", seed=config.seed)
