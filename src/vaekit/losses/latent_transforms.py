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

- **Latent denoising** (l-DeTok): ``LatentDenoising`` below corrupts the latent alone, the target stays x.

A batch gets at most one of them (EQ-VAE first, then scale equivariance; latent denoising takes every batch
neither took). A KL autoencoder applies τ in its forward pass (``AutoencoderKL.forward(..., transform=τ)``);
the KL term stays that of the untransformed posterior.
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


@dataclass(frozen=True)
class LatentDenoising:
    """Latent denoising (l-DeTok, Yang et al. 2025; Jiawei-Yang/DeTok, ``models/detok.py``): the decoder gets a
    corrupted latent and must still reconstruct the clean image, so the latent space it learns tolerates the
    errors a denoiser's samples carry.

    - Interpolative noise: per image a level t ~ U(0, 1), z ← (1 − t)·z + t·γ·ε with ε ~ N(0, I)
      (DeTok: γ = 3; ``noise_gamma``, 0 for none).
    - Masking: per image a ratio r = max(0, u), u ~ U(−0.1, ``mask_ratio``) (DeTok's draw, theirs up to 0.7),
      and that share of latent positions (all channels) is replaced by pure noise γ·ε (t = 1; zero without
      noise). DeTok's ViT encoder drops masked patches and its decoder puts a learned mask token there; a
      convolutional autoencoder keeps every position, so here the decoder alone sees the mask.
    """

    noise_gamma: float
    mask_ratio: float
    generator: torch.Generator

    def corrupt(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(corrupted z, each image's noise level t (B,), the mask (B, 1, h, w), 1 where replaced)."""
        batch, device = z.shape[0], z.device
        noise = torch.randn(z.shape, generator=self.generator, device=self.generator.device).to(device, z.dtype)
        noise = noise * self.noise_gamma
        level = torch.zeros(batch, device=device, dtype=z.dtype)
        if self.noise_gamma > 0:
            level = torch.rand(batch, generator=self.generator, device=self.generator.device).to(device, z.dtype)
        t = level.view(-1, 1, 1, 1)
        corrupted = (1 - t) * z + t * noise
        mask = torch.zeros(batch, 1, *z.shape[-2:], device=device, dtype=z.dtype)
        if self.mask_ratio > 0:
            mask = self._mask(batch, z.shape[-2:]).to(device, z.dtype)
            corrupted = torch.where(mask.bool(), noise, corrupted)
        return corrupted, level, mask

    def _mask(self, batch: int, side: tuple[int, int]) -> torch.Tensor:
        positions = side[0] * side[1]
        draw = torch.rand(batch, generator=self.generator, device=self.generator.device).cpu()
        ratios = (draw * (self.mask_ratio + 0.1) - 0.1).clamp(min=0.0)
        order = torch.rand(batch, positions, generator=self.generator, device=self.generator.device).cpu()
        ranks = order.argsort(dim=1).argsort(dim=1)  # each position's place in a random order
        kept = torch.ceil(positions * (1 - ratios)).long()
        return (ranks >= kept[:, None]).float().view(batch, 1, *side)

    def __call__(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the corrupted latent, the clean image it must still decode to)."""
        return self.corrupt(z)[0], x
