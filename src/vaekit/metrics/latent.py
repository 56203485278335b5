"""What makes a latent space easy or hard to diffuse, measured without training anything: its power
spectrum against the images' (latents with more high-frequency energy are harder to diffuse, "Improving the
Diffusability of Autoencoders", arXiv 2502.14831) and its equivariance to scaling and rotation (EQ-VAE,
arXiv 2502.09509): whether decoding a transformed latent gives the transformed image."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from vaekit.metrics.image import HIGH_FREQUENCY_CUTOFF, power_spectrum


def power_and_radius(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The power spectrum of ``x`` ``(N, C, H, W)``, each example and channel with its mean removed first (the
    DC term says nothing about texture), averaged over examples and channels: ``(H, W)`` float64 on the
    CPU, with the radial frequency (cycles per pixel) of each entry."""
    power, radius = power_spectrum(x, remove_mean=True)
    return power.mean(dim=tuple(range(x.ndim - 2))).cpu(), radius.cpu()


def radial_power_spectrum(x: torch.Tensor, bins: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The power spectrum of ``x`` ``(N, C, H, W)`` (``power_and_radius``) averaged over the angle:
    (frequencies in cycles per pixel (bin centres, 0 to 0.5), power per bin), float64. ``bins`` defaults to
    ``min(H, W) // 2``."""
    bins = bins or max(1, min(x.shape[-2:]) // 2)
    power, radius = power_and_radius(x)
    index = torch.clamp((radius / 0.5 * bins).long(), max=bins - 1).flatten()  # corners (radius > 0.5) join the last bin
    totals = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, power.flatten())
    counts = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(radius).flatten())
    frequencies = (torch.arange(bins, dtype=torch.float64) + 0.5) * 0.5 / bins
    return frequencies, totals / counts.clamp_min(1)


def high_frequency_fraction(x: torch.Tensor, cutoff: float = HIGH_FREQUENCY_CUTOFF) -> float:
    """The fraction of the (mean-removed) spectral energy of ``x`` ``(N, C, H, W)`` at radial frequencies of
    at least ``cutoff`` cycles per pixel."""
    power, radius = power_and_radius(x)
    total = power.sum().item()
    return (power * (radius >= cutoff)).sum().item() / total if total > 0 else 0.0


def downscale(x: torch.Tensor) -> torch.Tensor:
    """×0.5 by 2×2 averaging: the same operator for images and latents (sides must be even)."""
    return F.avg_pool2d(x, 2)


def rotate(x: torch.Tensor) -> torch.Tensor:
    """90° counter-clockwise."""
    return torch.rot90(x, 1, dims=(-2, -1))


TRANSFORMS = {"scale_0.5": downscale, "rotate_90": rotate}


def _even_crop(x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and latents cropped to the latents' largest even sides (f pixels per latent position)."""
    f = x.shape[-1] // z.shape[-1]
    h, w = z.shape[-2] - z.shape[-2] % 2, z.shape[-1] - z.shape[-1] % 2
    return x[..., : f * h, : f * w], z[..., :h, :w]


@torch.no_grad()
def equivariance_errors(encode: Callable[[torch.Tensor], torch.Tensor], decode: Callable[[torch.Tensor], torch.Tensor],
                        images: torch.Tensor, batch_size: int = 16, transforms: tuple[str, ...] = tuple(TRANSFORMS),
                        baseline: bool = True) -> dict[str, float]:
    """For each transform τ named in ``transforms`` (keys of ``TRANSFORMS``): the mean squared error
    ‖D(τ(E(x))) − τ(x)‖² per pixel over ``images`` ``(N, C, H, W)`` in [-1, 1] (decodings clipped to it), and,
    with ``baseline``, the plain reconstruction error ‖D(E(x)) − x‖². An autoencoder whose latent space is
    equivariant to τ scores the two about alike; zero for an exactly equivariant one. ×0.5 is left out when
    the latents have a side under 2, and any τ whose decoding is not the size of τ(x) (a decoder with a fixed
    output grid, as RAE's). One encode per batch, one decode per asked-for error."""
    sums: dict[str, float] = {}
    unmeasured: set[str] = set()
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        z = encode(x)
        if baseline:
            sums["reconstruction"] = sums.get("reconstruction", 0.0) + (decode(z).clamp(-1, 1) - x).double().pow(2).sum().item()
        for name in transforms:
            if name == "scale_0.5" and min(z.shape[-2:]) < 2:
                continue
            # ×0.5 needs even latent sides: an odd side loses its last row/column, and the image the
            # matching f pixels
            pixels, latent = (_even_crop(x, z) if name == "scale_0.5" else (x, z))
            target = TRANSFORMS[name](pixels)
            decoded = decode(TRANSFORMS[name](latent))
            if decoded.shape != target.shape:  # a decoder with a fixed output grid (RAE's ViT): nothing to compare
                unmeasured.add(name)
                continue
            error = (decoded.clamp(-1, 1) - target).double().pow(2).sum().item()
            sums[name] = sums.get(name, 0.0) + error * x[0].numel() / target[0].numel()  # per pixel of its own image
    count = images.numel()
    return {f"equivariance_mse_{name}" if name != "reconstruction" else "reconstruction_mse": value / count
            for name, value in sums.items() if name not in unmeasured}


@torch.no_grad()
def latent_signals(model, images: torch.Tensor, transforms: tuple[str, ...] = tuple(TRANSFORMS),
                   baseline: bool = False, seed: int = 0, batch_size: int = 16) -> dict[str, float]:
    """The cheap latent signals of an image autoencoder on ``images`` ``(N, C, H, W)`` in [-1, 1], measured on
    what a diffusion model trains on, posterior samples (one draw, seeded), the same way for validation and
    the diffusability report: ``latent_hf_fraction`` of the samples in the model's latent normalisation
    (``scale_latents``, where it has one), and ``equivariance_errors`` of the same samples for ``transforms``
    (with the plain reconstruction error when ``baseline``). Each image is encoded once."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    drawn = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        drawn.append(model.encode(x).sample(generator))
        return drawn[-1]

    out = equivariance_errors(encode, model.decode, images, batch_size, transforms, baseline)
    z = torch.cat(drawn)
    scaled = model.scale_latents(z) if hasattr(model, "scale_latents") else z
    return {"latent_hf_fraction": high_frequency_fraction(scaled.float()), **out}
