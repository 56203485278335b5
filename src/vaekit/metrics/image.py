"""Reconstruction metrics of image autoencoders (images in [-1, 1]): PSNR and SSIM (torchmetrics),
LPIPS (VGG), reconstruction FID (torch-fidelity's Inception through torchmetrics), latent statistics.

LPIPS and rFID need pretrained weights that cannot be downloaded offline; when they are missing the
metric is reported as unavailable with the file name and where to put it, and the others still run.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaekit.data.base import batch_loader
from vaekit.losses.perceptual import WeightsUnavailable, fetch_weights, make_lpips
from vaekit.moments import Moments
from vaekit.progress import progress

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (Gaussian window 11, σ 1.5) of images in [-1, 1], per batch element: ``(B,)``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(a, b, data_range=2.0, reduction="none")


FID_MIN_IMAGES = 2048
"""Below this many images (the Inception feature dimension) the covariance FID needs is rank-deficient."""


def inception_for_fid():
    """torchmetrics' FID (torch-fidelity's Inception-v3, 2048 features); its weights are downloaded into
    torch.hub's cache when they are not there, and ``WeightsUnavailable`` says so when that fails."""
    fetch_weights(INCEPTION_FILE, INCEPTION_URL, "FID/KID (torch-fidelity's Inception-v3)")
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=2048, normalize=True)


def inception_for_kid(subset_size: int):
    """torchmetrics' KID (the same Inception-v3 features as FID) when the weights are on disk."""
    inception_for_fid()  # the same weights file, the same error when it is missing
    from torchmetrics.image.kid import KernelInceptionDistance

    return KernelInceptionDistance(feature=2048, subset_size=subset_size, normalize=True)


def psnr(mse: float, peak_to_peak: float = 2.0) -> float:
    """PSNR in dB from a mean squared error (peak-to-peak 2 for images in [-1, 1])."""
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak**2 / mse)


def per_image_psnr(a: torch.Tensor, b: torch.Tensor, peak_to_peak: float = 2.0) -> torch.Tensor:
    """PSNR in dB of each image pair ``(B, C, H, W)``: ``(B,)`` float64 (inf for identical images)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(peak_to_peak**2 / mse)


HIGH_FREQUENCY_CUTOFF = 0.25
"""Cycles per pixel: the upper half of the band up to Nyquist (0.5), the detail an f ≥ 4 autoencoder
must invent or lose."""


def power_spectrum(x: torch.Tensor, remove_mean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The power |FFT|² of every ``(H, W)`` plane of ``x`` ``(..., H, W)`` (orthonormal, so its sum is the
    plane's sum of squares: Parseval), float64, optionally with each plane's mean removed first; and the
    radial frequency (cycles per pixel) of each entry, ``(H, W)``. The one spectrum behind the
    reconstructions' high-frequency energy and the latents' spectra (``metrics.latent``)."""
    height, width = x.shape[-2:]
    x = x.double()
    if remove_mean:
        x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x, norm="ortho").abs().pow(2)
    radius = torch.sqrt(torch.fft.fftfreq(height, dtype=torch.float64)[:, None] ** 2
                        + torch.fft.fftfreq(width, dtype=torch.float64)[None, :] ** 2)
    return power, radius.to(power.device)


def high_frequency_energy(images: torch.Tensor, cutoff: float = HIGH_FREQUENCY_CUTOFF) -> torch.Tensor:
    """Energy of each image's spectrum at radial frequencies of at least ``cutoff`` cycles per pixel,
    summed over channels: ``(B,)`` float64."""
    power, radius = power_spectrum(images)
    return (power * (radius >= cutoff)).sum(dim=(-3, -2, -1))


@torch.no_grad()
def evaluate_reconstruction(model: nn.Module, dataset, batch_size: int = 32, seed: int = 0,
                            device: str | torch.device = "cpu", to_model_range=lambda x: x,
                            perceptual: bool = True) -> dict:
    """Test-set metrics of an image autoencoder, reconstructing from the posterior mode (outputs clipped
    to [-1, 1]): MSE, PSNR (the mean of each image's PSNR, as published tables give it; and
    ``psnr_of_mean_mse``, the PSNR of the dataset's MSE), SSIM (mean over images), L1, LPIPS and rFID (or why they are unavailable), the high-frequency
    energy of the reconstructions against the originals' (``hf_energy_ratio``: below 1 is blur, above 1
    invented texture; needs no downloaded weights), KL per example, and
    the latents' statistics — overall and per channel — with 1/std, the scaling factor that would give
    them unit variance (LDM's recipe)."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    unavailable = {}
    lpips_net = fid = None
    if perceptual:
        try:
            lpips_net = make_lpips(pretrained_backbone=True).to(device)
        except WeightsUnavailable as err:
            unavailable["lpips"] = str(err)
        try:
            fid = inception_for_fid().to(device)
        except WeightsUnavailable as err:
            unavailable["rfid"] = str(err)
    squared = absolute = kl = ssim_sum = lpips_sum = hf_original = hf_reconstruction = psnr_sum = 0.0
    channels = model.config.latent_channels
    per_channel, overall = Moments(), Moments()
    code_counts = torch.zeros(model.quantize.num_embeddings, dtype=torch.int64) if model.regularizer == "vq" else None
    pixels = count = 0
    for x, _ in progress(batch_loader(dataset, batch_size=batch_size), total=math.ceil(len(dataset) / batch_size),
                         desc="eval", unit="batch"):
        x = to_model_range(x.to(device))
        posterior = model.encode(x)
        reconstruction = model.decode(posterior.mode(), size=x.shape[2:]).clamp(-1, 1)
        squared += (reconstruction - x).double().pow(2).sum().item()
        psnr_sum += per_image_psnr(reconstruction, x).sum().item()
        absolute += (reconstruction - x).double().abs().sum().item()
        ssim_sum += ssim(reconstruction, x).sum().item()
        kl += posterior.kl().sum().item()
        hf_original += high_frequency_energy(x).sum().item()
        hf_reconstruction += high_frequency_energy(reconstruction).sum().item()
        if lpips_net is not None:
            lpips_sum += lpips_net(reconstruction, x).sum().item()
        if fid is not None:
            fid.update((x + 1) / 2, real=True)
            fid.update((reconstruction + 1) / 2, real=False)
        if code_counts is not None:  # which code each latent position took
            codes = model.quantize.nearest(model.quantize.vectors_of(posterior.mean))
            code_counts += torch.bincount(codes.cpu(), minlength=len(code_counts))
        z = posterior.sample(generator).transpose(0, 1).reshape(channels, -1).cpu()
        per_channel.add(z)
        overall.add(z.reshape(-1))
        pixels += x.numel()
        count += len(x)
    mse = squared / pixels
    channel_mean, channel_std = per_channel.mean(), per_channel.variance().sqrt()
    overall_mean, overall_std = overall.mean().item(), overall.variance().sqrt().item()
    metrics = {"num_examples": count, "mse": mse, "psnr": psnr_sum / count, "psnr_of_mean_mse": psnr(mse),
               "ssim": ssim_sum / count,
               "l1": absolute / pixels, "kl": kl / count,
               "compression_ratio": pixels / overall.count}
    metrics["hf_energy_ratio"] = hf_reconstruction / hf_original if hf_original else math.nan
    metrics["lpips"] = lpips_sum / count if lpips_net is not None else None
    metrics["rfid"] = float(fid.compute()) if fid is not None and count > 1 else None
    if metrics["rfid"] is not None and count < FID_MIN_IMAGES:
        metrics["rfid_note"] = (f"over {count} images, fewer than the {FID_MIN_IMAGES} Inception features: the "
                                "estimate is biased upwards and noisy; compare only runs scored on the same images")
    metrics.update(latent_mean=overall_mean, latent_std=overall_std,
                   scaling_factor_estimate=1 / overall_std if overall_std else math.inf,
                   latent_channel_mean=channel_mean.tolist(), latent_channel_std=channel_std.tolist())
    if code_counts is not None:
        from vaekit.models.vq import perplexity_of

        metrics.update(codebook_usage=(code_counts > 0).double().mean().item(),
                       codes_used=int((code_counts > 0).sum()), perplexity=perplexity_of(code_counts).item())
    if unavailable:
        metrics["unavailable"] = unavailable
    return metrics
