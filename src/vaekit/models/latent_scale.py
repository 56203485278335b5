"""The latent hand-off: what a diffusion model trains on, defined once.

The convention is latent diffusion's (LDM's ``get_first_stage_encoding`` draws a fresh posterior sample
every time a latent is used, and ``scale_by_std`` sets the factor to 1/std of such samples):

- the diffusion model sees **posterior samples** z ~ q(z|x), drawn afresh each time (an export stores the
  posterior's mean and log-variance, and Stage B draws z from them every epoch);
- they are normalised by the factors in the autoencoder's config, in diffusers' spelling::

      latents = (z − shift_factor) · scaling_factor                           one number (SD; SD3/FLUX shift)
      latents = (z − latents_mean[c]) · scaling_factor / latents_std[c]       per channel (SDXL-style pipelines)

  and decoded by the inverse, ``z = latents · latents_std / scaling_factor + latents_mean`` (what diffusers'
  SDXL and Qwen-Image pipelines do before ``vae.decode``);
- calibration measures the factors on posterior samples, so that what the denoiser trains on has zero
  mean (with a shift or per-channel statistics) and unit variance.

Why samples and not means: the denoiser's data distribution is the aggregate posterior; for a well-trained
SD-like VAE (tiny posterior variance) samples and means agree, but on a weakly regularised or
under-trained one the posterior variance is a large share of the total, and a factor measured on means
leaves the samples far from unit variance.

VQ autoencoders encode to their continuous pre-quantisation latent (a point mass: samples are means) and
are calibrated the same way: the noise schedule wants unit variance whatever shapes the latent space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import torch

from vaekit.errors import VaekitError
from vaekit.models.distributions import DiagonalGaussian
from vaekit.moments import Moments


@dataclass(frozen=True)
class LatentNorm:
    """The factors that map an autoencoder's latents z to a diffusion model's latents and back."""

    scaling_factor: float = 1.0
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    """Per-channel offsets (diffusers' ``latents_mean``); with ``latents_std``, replaces ``shift_factor``."""
    latents_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_norm(self.scaling_factor, self.shift_factor, self.latents_mean, self.latents_std)

    @classmethod
    def of(cls, config) -> "LatentNorm":
        """The factors of a model config (per-channel statistics unset where the config has none)."""
        return cls(float(config.scaling_factor), config.shift_factor, _floats(getattr(config, "latents_mean", None)),
                   _floats(getattr(config, "latents_std", None)))

    @classmethod
    def from_manifest(cls, manifest: dict) -> "LatentNorm":
        """The factors an export or latents file records (``shift_factor`` 0 there means none)."""
        return cls(float(manifest["scaling_factor"]), manifest.get("shift_factor") or None,
                   _floats(manifest.get("latents_mean")), _floats(manifest.get("latents_std")))

    def to_dict(self) -> dict:
        return {"scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor or 0.0,
                "latents_mean": None if self.latents_mean is None else list(self.latents_mean),
                "latents_std": None if self.latents_std is None else list(self.latents_std)}

    @property
    def per_channel(self) -> bool:
        return self.latents_mean is not None

    def _offset_gain(self, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(offset, gain) with latents = (z − offset) · gain, shaped to broadcast over ``like`` (B, c, ...)."""
        if not self.per_channel:
            return self.shift_factor or 0.0, self.scaling_factor
        channels = like.shape[1]
        if channels != len(self.latents_mean):
            raise VaekitError(f"per-channel latent statistics for {len(self.latents_mean)} channels cannot normalise "
                              f"latents of {channels}")
        shape = (1, channels) + (1,) * (like.ndim - 2)
        mean = torch.tensor(self.latents_mean, dtype=torch.float64).view(shape)
        gain = self.scaling_factor / torch.tensor(self.latents_std, dtype=torch.float64).view(shape)
        return mean.to(like.device, like.dtype), gain.to(like.device, like.dtype)

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        """z ``(B, c, h, w)`` → the diffusion model's latents."""
        offset, gain = self._offset_gain(z)
        return (z - offset) * gain

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of ``scale``: latents → z for the autoencoder's decoder."""
        offset, gain = self._offset_gain(latents)
        return latents / gain + offset

    def scale_logvar(self, logvar: torch.Tensor) -> torch.Tensor:
        """The log-variance of the scaled latent: log σ² + 2 log gain."""
        _, gain = self._offset_gain(logvar)
        return logvar + 2 * (torch.log(gain) if isinstance(gain, torch.Tensor) else math.log(gain))


def _floats(values) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def check_norm(scaling_factor, shift_factor, latents_mean, latents_std) -> None:
    """Refuse factors that cannot normalise latents (a ValueError, as the config dataclasses raise)."""
    if not (isinstance(scaling_factor, (int, float)) and math.isfinite(scaling_factor) and scaling_factor > 0):
        raise ValueError(f"scaling_factor must be a positive number, got {scaling_factor!r}")
    if shift_factor is not None and not math.isfinite(shift_factor):
        raise ValueError(f"shift_factor must be a finite number, got {shift_factor!r}")
    if (latents_mean is None) != (latents_std is None):
        raise ValueError("latents_mean and latents_std come together (per-channel normalisation) or not at all")
    if latents_mean is None:
        return
    if shift_factor is not None:
        raise ValueError("shift_factor and per-channel latents_mean both shift the latents: set one of them")
    if len(latents_mean) != len(latents_std) or not latents_mean:
        raise ValueError("latents_mean and latents_std need one value per latent channel, as many of each")
    if not all(math.isfinite(m) for m in latents_mean) or not all(math.isfinite(s) and s > 0 for s in latents_std):
        raise ValueError("latents_mean must be finite and latents_std positive, per channel")


def posterior_sample(mean: torch.Tensor, logvar: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
    """mean + exp(logvar / 2) · noise: a posterior sample from stored parameters (the mean when there is no
    log-variance: a point-mass posterior), with the posterior's own clamping of the log-variance."""
    if logvar is None:
        return mean
    return mean + DiagonalGaussian(mean, logvar).std * noise


def sample_moments(mean: torch.Tensor, logvar: torch.Tensor | None) -> tuple[float, float]:
    """(mean, std) of posterior samples over every element of ``mean`` ``(N, ...)``, in closed form:
    Var[z] = Var[mean] + E[σ²] (the law of total variance), so no noise is drawn. float64."""
    mean = mean.double()
    center = mean.mean().item()
    variance = mean.var(correction=0).item()
    if logvar is not None:
        variance += DiagonalGaussian(mean, logvar.double()).var.mean().item()
    return center, math.sqrt(variance)


class Calibration(NamedTuple):
    norm: LatentNorm
    images: int


@torch.no_grad()
def measure_latent_scale(model, batches: Iterable, generator: torch.Generator | None = None,
                         with_shift: bool = False, per_channel: bool = False,
                         max_images: int | None = None) -> Calibration:
    """The factors a diffusion model wants, from posterior samples z ~ q(z|x) (LDM's recipe): scaling_factor
    = 1 / std(z) and, ``with_shift`` (SD3/FLUX style), shift_factor = mean(z); or, ``per_channel``,
    latents_mean / latents_std per channel with scaling_factor 1. ``batches`` yields images ``(B, C, H, W)``
    in the model's range (or ``(images, labels)`` pairs); at most ``max_images`` are used. Moments
    accumulate in float64. Nothing is stored: see ``store_latent_scale``."""
    moments = Moments()
    images = 0
    parameter = next(model.parameters())
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if max_images is not None:
            x = x[:max_images - images]
        if len(x) == 0:
            break
        z = model.encode(x.to(parameter.device, parameter.dtype)).sample(generator)
        moments.add(z.transpose(0, 1).reshape(z.shape[1], -1))  # per channel; pooled below when not asked
        images += len(x)
        if max_images is not None and images >= max_images:
            break
    if moments.count < 2:
        raise VaekitError("measuring the latent scale needs at least one image")
    return Calibration(_norm_from_moments(moments, with_shift, per_channel), images)


def _norm_from_moments(moments: Moments, with_shift: bool, per_channel: bool) -> LatentNorm:
    channel_mean, channel_var = moments.mean(), moments.variance(correction=1)
    if per_channel:
        if not bool((channel_var > 0).all()):
            raise VaekitError("a latent channel has no spread: per-channel statistics cannot normalise it")
        return LatentNorm(1.0, None, tuple(channel_mean.tolist()), tuple(channel_var.sqrt().tolist()))
    count = moments.count * len(channel_mean)
    mean = channel_mean.mean().item()
    # the pooled variance: within-channel spread plus the spread of the channel means
    pooled = ((channel_var * (moments.count - 1)).sum() + moments.count * (channel_mean - mean).pow(2).sum())
    variance = pooled.item() / (count - 1)
    if not variance > 0:
        raise VaekitError(f"the latents have no spread (variance {variance:g}): no scaling factor can normalise them")
    return LatentNorm(1.0 / math.sqrt(variance), mean if with_shift else None)


def store_latent_scale(model, norm: LatentNorm) -> None:
    """Record measured factors in the model's config (what ``save_model`` and diffusers exports write)."""
    model.config.scaling_factor = norm.scaling_factor
    model.config.shift_factor = norm.shift_factor
    model.config.latents_mean = norm.latents_mean
    model.config.latents_std = norm.latents_std
