"""The latent hand-off: what a diffusion model trains on, defined once.

The convention is latent diffusion's (LDM's ``get_first_stage_encoding`` draws a fresh posterior sample
every time a latent is used, and ``scale_by_std`` sets the factor to 1/std of such samples):

- the diffusion model sees **posterior samples** z ~ q(z|x), drawn afresh each time (an export stores the
  posterior's mean and log-variance, and Stage B draws z from them every epoch);
- they are normalised by the factors in the autoencoder's config, in diffusers' spelling::

      latents = (z − shift_factor) · scaling_factor                           one number (SD; SD3/FLUX shift)
      latents = (z − latents_mean[c]) · scaling_factor / latents_std[c]       per channel (SDXL-style pipelines)

  and decoded by the inverse, ``z = latents · latents_std / scaling_factor + latents_mean`` (what diffusers'
  SDXL and Qwen-Image pipelines do before ``vae.decode``). With ``patch_size`` p > 1 (FLUX.2's
  ``diffusers/pipelines/flux2/pipeline_flux2.py``: p = 2, its batch norm's running statistics as the
  per-channel mean and std) every p × p neighbourhood of z is first folded into channels,
  ``(c, h, w) → (c·p², h/p, w/p)``, and the statistics are per channel of that; ``unscale`` unfolds last.
  Every family of image autoencoder vaekit loads is one case of this rule (``DiffusersAutoencoder.latent_norm``
  gives each family's), so an export, a latents file and a sampler record and undo it alike;
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
    patch_size: int = 1
    """Fold every p × p neighbourhood of z into channels before the statistics (FLUX.2: 2); 1 = none."""

    def __post_init__(self) -> None:
        check_norm(self.scaling_factor, self.shift_factor, self.latents_mean, self.latents_std)
        if not (isinstance(self.patch_size, int) and self.patch_size >= 1):
            raise ValueError(f"patch_size must be a whole number of at least 1, got {self.patch_size!r}")

    @classmethod
    def of(cls, config) -> "LatentNorm":
        """The factors of a model config (per-channel statistics unset where the config has none)."""
        return cls(float(config.scaling_factor), config.shift_factor, _floats(getattr(config, "latents_mean", None)),
                   _floats(getattr(config, "latents_std", None)))

    @classmethod
    def from_manifest(cls, manifest: dict) -> "LatentNorm":
        """The factors an export or latents file records (``shift_factor`` 0 there means none; a record from
        before ``patch_size`` folds nothing)."""
        return cls(float(manifest["scaling_factor"]), manifest.get("shift_factor") or None,
                   _floats(manifest.get("latents_mean")), _floats(manifest.get("latents_std")),
                   int(manifest.get("patch_size", 1)))

    def to_dict(self) -> dict:
        """The record ``from_manifest`` reads back. ``patch_size`` only where it folds (> 1): a record without it
        folds nothing, so unfolded records (metrics.json, exports, latents files) stay what they were before it."""
        folded = {"patch_size": self.patch_size} if self.patch_size != 1 else {}
        return {"scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor or 0.0,
                "latents_mean": None if self.latents_mean is None else list(self.latents_mean),
                "latents_std": None if self.latents_std is None else list(self.latents_std), **folded}

    @property
    def per_channel(self) -> bool:
        return self.latents_mean is not None

    def describe(self) -> str:
        """In words, for what a command prints: the normalisation applied."""
        fold = f"{self.patch_size}×{self.patch_size} patches folded into channels, then " if self.patch_size > 1 else ""
        if self.per_channel:
            scale = f" and scaling factor {self.scaling_factor:g}" if self.scaling_factor != 1 else ""
            return f"{fold}per-channel latents_mean/latents_std ({len(self.latents_mean)} channels){scale}"
        shift = f" after shift {self.shift_factor:g}" if self.shift_factor is not None else ""
        return f"{fold}scaling factor {self.scaling_factor:g}{shift}"

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
        """z ``(B, c, h, w)`` → the diffusion model's latents ``(B, c·p², h/p, w/p)``."""
        z = patchify(z, self.patch_size)
        offset, gain = self._offset_gain(z)
        return (z - offset) * gain

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of ``scale``: latents → z for the autoencoder's decoder."""
        offset, gain = self._offset_gain(latents)
        return unpatchify(latents / gain + offset, self.patch_size)

    def scale_logvar(self, logvar: torch.Tensor) -> torch.Tensor:
        """The log-variance of the scaled latent: log σ² (folded as z is) + 2 log gain."""
        logvar = patchify(logvar, self.patch_size)
        _, gain = self._offset_gain(logvar)
        return logvar + 2 * (torch.log(gain) if isinstance(gain, torch.Tensor) else math.log(gain))


def patchify(z: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, c, h, w)`` → ``(B, c·p², h/p, w/p)``: each p × p neighbourhood's values as channels, channel-major
    (FLUX.2's ``_patchify_latents`` order for p = 2, ``diffusers/pipelines/flux2/pipeline_flux2.py``)."""
    if p == 1:
        return z
    b, c, h, w = z.shape
    if h % p or w % p:
        raise VaekitError(f"latents of {h} × {w} cannot be folded into {p} × {p} patches: give images whose sides are "
                          f"multiples of {p} × the autoencoder's downsampling factor")
    return z.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, h // p, w // p)


def unpatchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of ``patchify`` (FLUX.2's ``_unpatchify_latents`` for p = 2)."""
    if p == 1:
        return latents
    b, cp, h, w = latents.shape
    if cp % (p * p):
        raise VaekitError(f"latents of {cp} channels cannot be unfolded from {p} × {p} patches")
    c = cp // (p * p)
    return latents.reshape(b, c, p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * p, w * p)


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
    moments, images = _sample_moments(model, batches, generator, max_images, normalised=False)
    return Calibration(_norm_from_moments(moments, with_shift, per_channel), images)


class LatentStatistics(NamedTuple):
    """Of the normalised latents a diffusion model trains on (``model.latent_norm.scale`` of posterior
    samples), over the images measured: per channel, and pooled over every channel."""

    channel_mean: torch.Tensor
    channel_std: torch.Tensor
    mean: float
    std: float
    images: int


@torch.no_grad()
def measure_normalised_latents(model, batches: Iterable, generator: torch.Generator | None = None,
                               max_images: int | None = None) -> LatentStatistics:
    """The statistics of what the model hands a diffusion model now (its own normalisation applied to
    posterior samples z ~ q(z|x)): std near 1 and mean near 0 say that its factors fit these images.
    Unbiased variances, float64; ``batches`` and ``max_images`` as for ``measure_latent_scale``."""
    moments, images = _sample_moments(model, batches, generator, max_images, normalised=True)
    channel_mean, channel_var = moments.mean(), moments.variance(correction=1)
    mean, variance = _pooled(moments)
    return LatentStatistics(channel_mean, channel_var.sqrt(), mean, math.sqrt(variance), images)


def _sample_moments(model, batches: Iterable, generator, max_images: int | None, normalised: bool):
    """Per-channel moments of posterior samples (``normalised``: after ``model.latent_norm.scale``) and the
    number of images they came from."""
    moments = Moments()
    images = 0
    parameter = next(model.parameters())
    norm = model.latent_norm if normalised else None
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if max_images is not None:
            x = x[:max_images - images]
        if len(x) == 0:
            break
        z = model.encode(x.to(parameter.device, parameter.dtype)).sample(generator)
        if norm is not None:
            z = norm.scale(z.float())
        moments.add(z.transpose(0, 1).reshape(z.shape[1], -1))  # per channel; pooled where asked
        images += len(x)
        if max_images is not None and images >= max_images:
            break
    if moments.count < 2:
        raise VaekitError("measuring the latent scale needs at least one image")
    return moments, images


def _pooled(moments: Moments) -> tuple[float, float]:
    """(mean, unbiased variance) over every channel together: the within-channel spread plus the spread of
    the channel means."""
    channel_mean, channel_var = moments.mean(), moments.variance(correction=1)
    count = moments.count * len(channel_mean)
    mean = channel_mean.mean().item()
    pooled = ((channel_var * (moments.count - 1)).sum() + moments.count * (channel_mean - mean).pow(2).sum())
    return mean, pooled.item() / (count - 1)


def _norm_from_moments(moments: Moments, with_shift: bool, per_channel: bool) -> LatentNorm:
    channel_mean, channel_var = moments.mean(), moments.variance(correction=1)
    if per_channel:
        if not bool((channel_var > 0).all()):
            raise VaekitError("a latent channel has no spread: per-channel statistics cannot normalise it")
        return LatentNorm(1.0, None, tuple(channel_mean.tolist()), tuple(channel_var.sqrt().tolist()))
    mean, variance = _pooled(moments)
    if not variance > 0:
        raise VaekitError(f"the latents have no spread (variance {variance:g}): no scaling factor can normalise them")
    return LatentNorm(1.0 / math.sqrt(variance), mean if with_shift else None)


def store_latent_scale(model, norm: LatentNorm) -> None:
    """Record measured factors in the model's config (what ``save_model`` and diffusers exports write)."""
    model.config.scaling_factor = norm.scaling_factor
    model.config.shift_factor = norm.shift_factor
    model.config.latents_mean = norm.latents_mean
    model.config.latents_std = norm.latents_std
