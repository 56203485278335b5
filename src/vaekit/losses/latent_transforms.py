"""What the latent regularisers do to one training batch of a KL autoencoder. The model's forward pass
(``AutoencoderKL.forward(..., transform=BatchRegularisers)``) asks this batch's object three things:

1. ``encoder_input(x)``: the image the encoder sees (latent denoising's masking hides patches of it);
2. ``(z, x) → (z', target)``: what the decoder gets instead of the sampled latent z and what its output is
   compared with (EQ-VAE: both transformed; latent denoising: a corrupted z', the clean image);
3. ``downsampled(z, x)``: scale equivariance's added pair (down(z), down(x)), or None.

- **EQ-VAE** (Kouzelis et al. 2025; zelaki/eqvae, ``ldm/models/autoencoder.py``, ``training_step`` and
  ``forward``): with probability ``loss.eqvae_prob`` per batch (their ``p_prior``: 0.5), a scale s = k/h with k
  uniform in h/4 … h − 1 for a latent of side h (theirs: ``random.choice([s / 32 for s in range(8, 32)])`` on
  32-wide latents), bilinear on the sampled latent and on the image, then a turn by 90°·{1, 2, 3}. The
  decoder rebuilds τ(x) from τ(z); the batch has no full-size term (their ``self.loss(inputs, ...)`` takes
  the transformed pair alone).
- **Scale equivariance** (Skorokhodov et al. 2025, arXiv 2502.14831): on every batch, a factor k ∈ {2, 4}
  (each half of the time) and bilinear down-sampling of the sampled latent and of the image by k; the
  loss *adds* the reconstruction of down(x) from down(z), weighted, to the batch's usual loss.
- **Latent denoising** (Yang et al. 2025; Jiawei-Yang/DeTok, ``models/detok.py``): ``LatentDenoising``.

A batch gets EQ-VAE's transform or latent denoising, never both (EQ-VAE draws first; latent denoising takes
every batch it did not), and scale equivariance's added pair on top of either. The KL term is that of the
posterior the encoder gave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCALE_EQUIVARIANCE_FACTORS = (2, 4)
"""Down-sampling factors of scale equivariance, drawn uniformly per batch (arXiv 2502.14831: ×2 and ×4)."""


def bilinear(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``t`` (B, C, H, W) resized to ``size`` bilinearly (align_corners=False, no antialiasing: torch's
    ``F.interpolate`` defaults, which zelaki/eqvae calls)."""
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class LatentTransform:
    """EQ-VAE's τ: scale by ``scale`` (bilinear; None: keep the size), then rotate by ``quarter_turns`` × 90°
    counter-clockwise. The image's side stays f times the latent's."""

    scale: float | None = None
    quarter_turns: int = 0

    def _apply(self, t: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
        if size is not None:
            t = bilinear(t, size)
        return torch.rot90(t, self.quarter_turns, dims=(-2, -1)) if self.quarter_turns else t

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __call__(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(τ(z), τ(x)) for a latent ``z`` of side h and an image ``x`` of side f·h."""
        f = x.shape[-1] // z.shape[-1]
        latent_size = image_size = None
        if self.scale is not None:
            latent_size = (round(z.shape[-2] * self.scale), round(z.shape[-1] * self.scale))
            image_size = (f * latent_size[0], f * latent_size[1])
        return self._apply(z, latent_size), self._apply(x, image_size)


def downsample_pair(z: torch.Tensor, x: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale equivariance's pair: z (B, c, h, w) and x (B, C, f·h, f·w) resized bilinearly to
    (⌊h/factor⌋, ⌊w/factor⌋) and f times that, so the image stays f times the latent."""
    f = x.shape[-1] // z.shape[-1]
    latent_size = (max(z.shape[-2] // factor, 1), max(z.shape[-1] // factor, 1))
    return bilinear(z, latent_size), bilinear(x, (f * latent_size[0], f * latent_size[1]))


def _uniform_index(count: int, generator: torch.Generator) -> int:
    return int(torch.randint(count, (1,), generator=generator, device=generator.device).item())


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand(1, generator=generator, device=generator.device).item())


def draw_eqvae(eqvae_prob: float, latent_side: int, generator: torch.Generator) -> LatentTransform | None:
    """EQ-VAE's τ for this batch with probability ``eqvae_prob``, else None."""
    if eqvae_prob <= 0 or _uniform(generator) >= eqvae_prob:
        return None
    smallest = max(latent_side // 4, 1)
    k = smallest + _uniform_index(max(latent_side - smallest, 1), generator)
    return LatentTransform(scale=k / latent_side, quarter_turns=1 + _uniform_index(3, generator))


def draw_downsampling(latent_side: int, generator: torch.Generator) -> int | None:
    """Scale equivariance's factor for this batch: 2 or 4 with equal chance, among those that leave the
    latent at least one position wide (None when none does)."""
    factors = [k for k in SCALE_EQUIVARIANCE_FACTORS if latent_side // k >= 1]
    return factors[_uniform_index(len(factors), generator)] if factors else None


def draw_mask(batch: int, latent_size: tuple[int, int], mask_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """DeTok's masking (``Encoder.mae_random_masking``): one ratio r = max(0, u), u ~ U(−0.1, ``mask_ratio``)
    for the whole batch, ⌈L·(1 − r)⌉ of the L latent positions kept, which ones drawn per image. Returns
    (B, 1, h, w) on the CPU, 1 where masked."""
    positions = latent_size[0] * latent_size[1]
    ratio = max(0.0, _uniform(generator) * (mask_ratio + 0.1) - 0.1)
    kept = math.ceil(positions * (1 - ratio))
    order = torch.rand(batch, positions, generator=generator, device=generator.device).cpu()
    ranks = order.argsort(dim=1).argsort(dim=1)  # each position's place in this image's random order
    return (ranks >= kept).float().view(batch, 1, *latent_size)


@dataclass(frozen=True)
class LatentDenoising:
    """Latent denoising (l-DeTok, Yang et al. 2025; Jiawei-Yang/DeTok, ``models/detok.py``): the decoder gets a
    corrupted latent and must still rebuild the clean image, so the latent space tolerates the errors a
    denoiser's samples carry.

    - Masking (``mask``, from ``draw_mask``; None: off): the masked patches of the image — f × f pixels
      under each masked latent position — are set to 0 (mid-grey) before the encoder, and the decoder gets
      ``mask_token`` (c,) at the masked positions instead of the encoder's latent. DeTok's ViT drops masked
      patches from the encoder's sequence and its decoder puts a learned mask token there; a convolutional
      encoder has no sequence to drop from, so zeros stand in for the absent patches, and the learned
      token is placed where the decoder reads the latent.
    - Interpolative noise on the other positions: per image a level t ~ U(0, 1),
      z ← (1 − t)·z + t·γ·ε, ε ~ N(0, I) (DeTok's γ = 3; ``noise_gamma``, 0 for none).
    """

    noise_gamma: float
    generator: torch.Generator
    mask: torch.Tensor | None = None
    mask_token: torch.Tensor | None = None
    patch: int = 1
    """The model's downsampling factor f: the side of the image patch under one latent position."""

    def pixel_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The mask (B, 1, H, W) at the image's resolution: each latent position's f × f patch."""
        patches = self.mask.repeat_interleave(self.patch, dim=-2).repeat_interleave(self.patch, dim=-1)
        return patches[..., :x.shape[-2], :x.shape[-1]].to(x.device, x.dtype)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mask is None else x * (1 - self.pixel_mask(x))

    def corrupt(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the decoder's latent, each image's noise level t (B,))."""
        batch, device = z.shape[0], z.device
        level = torch.zeros(batch, device=device, dtype=z.dtype)
        corrupted = z
        if self.noise_gamma > 0:
            noise = torch.randn(z.shape, generator=self.generator, device=self.generator.device).to(device, z.dtype)
            level = torch.rand(batch, generator=self.generator, device=self.generator.device).to(device, z.dtype)
            t = level.view(-1, 1, 1, 1)
            corrupted = (1 - t) * z + t * self.noise_gamma * noise
        if self.mask is not None:
            token = self.mask_token.to(device, z.dtype).view(1, -1, 1, 1)
            corrupted = torch.where(self.mask.to(device).bool(), token, corrupted)
        return corrupted, level

    def __call__(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the corrupted latent, the clean image it must still decode to)."""
        return self.corrupt(z)[0], x


@dataclass(frozen=True)
class BatchRegularisers:
    """One batch's regularisers: ``transform`` (EQ-VAE's ``LatentTransform`` or ``LatentDenoising``; None:
    the usual pair) and scale equivariance's factor ``downsample`` (None: no added pair)."""

    transform: LatentTransform | LatentDenoising | None = None
    downsample: int | None = None

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.transform is None else self.transform.encoder_input(x)

    def __call__(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the decoder's latent, its target); the target is None when the batch keeps the usual pair."""
        return (z, None) if self.transform is None else self.transform(z, x)

    def downsampled(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Scale equivariance's (down(z), down(x)) of the sampled latent and the (clean) image, or None."""
        return None if self.downsample is None else downsample_pair(z, x, self.downsample)
