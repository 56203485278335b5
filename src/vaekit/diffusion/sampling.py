"""Samples of a trained denoiser, decoded into images through the VAE whose latents it was trained on."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vaekit.errors import VaekitError
from vaekit.io.models import load_model
from vaekit.latents import fingerprint
from vaekit.models.latent_scale import LatentNorm

log = logging.getLogger("vaekit")


def load_vae_for(manifest: dict, vae: str | Path | None = None, device: str | torch.device = "cpu"):
    """The VAE that encoded an export: ``vae`` when given, else the ``model_source`` its manifest records;
    refused when its weights are not the ones the latents were encoded with (the fingerprint differs)."""

    source = vae or manifest.get("model_source")
    if source is None:
        raise VaekitError("the latents' manifest does not record the VAE that encoded them (an export from an older "
                          "vaekit, or through the Python API without model_source): give it with --vae PATH")
    try:
        model = load_model(source, device=device)
    except VaekitError as err:
        raise VaekitError(f"cannot load the VAE that encoded the latents ({source}): {err}; give it with --vae PATH") from err
    if model.kind != "autoencoder" or model.latent_layout != "spatial":
        raise VaekitError(f"{source} holds a {model.registry_name}, not the image autoencoder that encoded the latents")
    if fingerprint(model) != manifest["model_fingerprint"]:
        raise VaekitError(f"{source} is not the VAE the latents were encoded with (its weights differ from the "
                          "export's fingerprint): give the right one with --vae PATH")
    return model.eval()


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, manifest: dict, batch_size: int = 8) -> torch.Tensor:
    """Latents normalised as in ``manifest`` → images in [-1, 1] (the export's own factors are undone, which
    may differ from the VAE's current config; a VQ model quantises them to its codes as it decodes)."""

    norm = LatentNorm.from_manifest(manifest)
    parameter = next(vae.parameters())
    out = []
    for start in range(0, len(latents), batch_size):
        z = norm.unscale(latents[start:start + batch_size].to(parameter.device, torch.float32))
        out.append(vae.decode(z.to(parameter.dtype)).clamp(-1, 1).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def sample_latents(model, count: int, steps: int = 50, scheduler: str = "ddim", label: int | None = None,
                   seed: int = 0, batch_size: int = 16, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``count`` latents from the denoiser (noise from ``seed``); a class-conditional model samples class
    ``label``, or the classes in turn when it is None. Returns (latents, labels or None)."""
    c = model.config
    labels = None
    if model.conditional:
        if label is not None and not 0 <= label < c.num_classes:
            raise VaekitError(f"--class {label}: the model knows classes 0 to {c.num_classes - 1}")
        labels = torch.full((count,), label) if label is not None else torch.arange(count) % c.num_classes
    elif label is not None:
        raise VaekitError("--class needs a class-conditional model (model.class_conditional=true)")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((count, c.in_channels, c.sample_size, c.sample_size), generator=generator)
    out = []
    for start in range(0, count, batch_size):
        batch_labels = None if labels is None else labels[start:start + batch_size].to(device)
        out.append(model.sample(noise[start:start + batch_size].to(device), steps, scheduler, batch_labels,
                                generator=torch.Generator(device=device).manual_seed(seed + start)).cpu())
    return torch.cat(out), labels
