"""Latent regularisers that change what the decoder is asked to reconstruct: a transform τ applied to the
sampled latent and to the image alike, so that the loss compares D(τ(z)) with τ(x).

- **EQ-VAE** (Kouzelis et al. 2025; zelaki/eqvae, ``ldm/models/autoencoder.py``): with probability
  ``loss.eqvae_prob`` per batch (theirs: 0.5), τ scales by a random s = k/h, k uniform in h/4 … h − 1 for a
  latent of side h (bilinear, as theirs: their s = k/32 for a 32-wide latent, so image and latent sides
  stay whole), then rotates by a random 90°, 180° or 270°. Their other half of the batches ("prior
  preservation", a quarter of them on down-scaled inputs) is the plain loss here.
- **Scale equivariance** (Skorokhodov et al. 2025, "Improving the Diffusability of Autoencoders"): with
  probability ``loss.scale_equivariance_prob``, τ averages 2×2 or 4×4 blocks (each half of the time) of
  the latent and of the image: the decoder must rebuild the down-sampled image from the down-sampled
  latent, which penalises high-frequency content in the latents that the image does not have.

A batch gets at most one of them (EQ-VAE first). A KL autoencoder applies τ in its forward pass
(``AutoencoderKL.forward(..., transform=τ)``); the KL term stays that of the untransformed posterior.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LatentTransform:
    """Scale by ``scale`` (bilinear; None: keep the size), or average ``pool`` × ``pool`` blocks, then
    rotate by ``quarter_turns`` × 90° counter-clockwise."""

    scale: float | None = None
    pool: int | None = None
    quarter_turns: int = 0

    def _apply(self, t: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
        if size is not None:
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        if self.pool is not None:
            t = F.avg_pool2d(t, self.pool)
        return torch.rot90(t, self.quarter_turns, dims=(-2, -1)) if self.quarter_turns else t

    def __call__(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(τ(z), τ(x)) for a latent ``z`` of side h and an image ``x`` of side f·h."""
        f = x.shape[-1] // z.shape[-1]
        latent_size = image_size = None
        if self.scale is not None:
            latent_size = (round(z.shape[-2] * self.scale), round(z.shape[-1] * self.scale))
            image_size = (f * latent_size[0], f * latent_size[1])
        if self.pool is not None:
            h, w = z.shape[-2] - z.shape[-2] % self.pool, z.shape[-1] - z.shape[-1] % self.pool
            z, x = z[..., :h, :w], x[..., :f * h, :f * w]
        return self._apply(z, latent_size), self._apply(x, image_size)


def _uniform_index(count: int, generator: torch.Generator) -> int:
    return int(torch.randint(count, (1,), generator=generator, device=generator.device).item())


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand(1, generator=generator, device=generator.device).item())


def draw_transform(eqvae_prob: float, scale_equivariance_prob: float, latent_side: int,
                   generator: torch.Generator) -> LatentTransform | None:
    """This batch's transform (None: the plain loss), drawn from ``generator``."""
    if eqvae_prob > 0 and _uniform(generator) < eqvae_prob:
        smallest = max(latent_side // 4, 1)
        k = smallest + _uniform_index(max(latent_side - smallest, 1), generator)
        return LatentTransform(scale=k / latent_side, quarter_turns=1 + _uniform_index(3, generator))
    if scale_equivariance_prob > 0 and _uniform(generator) < scale_equivariance_prob:
        pool = 2 if _uniform(generator) < 0.5 or latent_side < 4 else 4
        return LatentTransform(pool=pool) if latent_side >= 2 else None
    return None
