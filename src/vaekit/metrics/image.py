"""Reconstruction metrics of image autoencoders (images in [-1, 1])."""

from __future__ import annotations

import math

import torch
from torch import nn

from vaekit.data.base import batch_loader


def psnr(mse: float, peak_to_peak: float = 2.0) -> float:
    """PSNR in dB from a mean squared error (peak-to-peak 2 for images in [-1, 1])."""
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak**2 / mse)


@torch.no_grad()
def evaluate_reconstruction(model: nn.Module, dataset, batch_size: int = 32, seed: int = 0,
                            device: str | torch.device = "cpu", to_model_range=lambda x: x) -> dict:
    """MSE and PSNR of the reconstructions from the posterior mode (outputs clipped to [-1, 1]), mean
    absolute error, KL per example, and the statistics of the latents: their std over everything and
    1/std, the scaling factor that would give them unit variance (LDM's recipe)."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    squared = absolute = kl = 0.0
    z_sum = z_squares = 0.0
    pixels = latents = count = 0
    for x, _ in batch_loader(dataset, batch_size=batch_size):
        x = to_model_range(x.to(device))
        posterior = model.encode(x)
        reconstruction = model.decode(posterior.mode(), size=x.shape[2:]).clamp(-1, 1)
        squared += (reconstruction - x).double().pow(2).sum().item()
        absolute += (reconstruction - x).double().abs().sum().item()
        kl += posterior.kl().sum().item()
        z = posterior.sample(generator).double()
        z_sum, z_squares, latents = z_sum + z.sum().item(), z_squares + z.pow(2).sum().item(), latents + z.numel()
        pixels += x.numel()
        count += len(x)
    mse = squared / pixels
    z_mean = z_sum / latents
    z_std = math.sqrt(max(z_squares / latents - z_mean**2, 0.0))
    return {"num_examples": count, "mse": mse, "psnr": psnr(mse), "l1": absolute / pixels, "kl": kl / count,
            "latent_mean": z_mean, "latent_std": z_std, "scaling_factor_estimate": 1 / z_std if z_std else math.inf}
