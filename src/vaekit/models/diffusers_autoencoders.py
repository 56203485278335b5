"""The image autoencoders diffusers ships that vaekit does not re-implement, wrapped behind vaekit's image
autoencoder interface: ``encode(x) -> DiagonalGaussian`` (a point mass for deterministic encoders),
``decode(z, size=None)``, and ``scale_latents``/``unscale_latents``: the family's latent normalisation as
its own diffusers pipeline applies it before the diffusion model sees the latents (paths below are under
``diffusers/pipelines/``). Images are in [-1, 1]; ``z`` is the class's raw latent ``(B, C, h, w)``.

=========================  ==============================================================================
class                      latents for the diffusion model (``scale_latents``), from the pipeline named
=========================  ==============================================================================
AsymmetricAutoencoderKL    z · scaling_factor (stable_diffusion/pipeline_stable_diffusion_inpaint.py)
AutoencoderTiny            z as it is: TAESD's latents are already in the scaled space (scaling_factor 1,
                           shift 0; dreamlite/pipeline_dreamlite.py)
AutoencoderDC              z · scaling_factor (sana/pipeline_sana.py)
AutoencoderKLFlux2         2×2 patchify to (4C, h/2, w/2), then (z − running_mean) / √(running_var + eps)
                           with the model's batch-norm statistics (flux2/pipeline_flux2.py)
AutoencoderKLQwenImage     (z − latents_mean) / latents_std per channel; one frame of the 5-D (B, C, T, H, W)
                           layout (qwenimage/pipeline_qwenimage.py)
AutoencoderKLWan           the same as Qwen-Image (wan/pipeline_wan.py)
AutoencoderKLHunyuanImage  z · scaling_factor (hunyuan_image/pipeline_hunyuanimage.py)
AutoencoderRAE             z as it is: the model normalises its encoder's tokens itself (latents_mean,
                           latents_std, scaling_factor; models/autoencoders/autoencoder_rae.py)
ConsistencyDecoderVAE      z · scaling_factor (stable_diffusion/pipeline_stable_diffusion.py); decoded by
                           its consistency model with a fixed generator (seed 0), so decoding is repeatable
=========================  ==============================================================================

``AutoencoderKL`` and ``VQModel`` are not wrapped: vaekit loads their weights into its own models, which
train, tile and run the fast CPU path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.errors import VaekitError
from vaekit.models.distributions import DiagonalGaussian

SCALED = {"AsymmetricAutoencoderKL", "AutoencoderDC", "AutoencoderKLHunyuanImage", "ConsistencyDecoderVAE"}
"""Families whose pipelines multiply the raw latent by ``scaling_factor``."""
AS_IS = {"AutoencoderTiny", "AutoencoderRAE"}
FRAMES = {"AutoencoderKLQwenImage", "AutoencoderKLWan"}
"""Video autoencoders: an image is one frame of ``(B, C, T, H, W)``."""
WRAPPED = SCALED | AS_IS | FRAMES | {"AutoencoderKLFlux2"}
NATIVE = ("AutoencoderKL", "VQModel")


@dataclass
class WrappedConfig:
    """What vaekit's commands read from a model's config."""

    class_name: str
    latent_channels: int
    """Of the raw latent (FLUX.2's diffusion model sees 4× as many, at half the side)."""
    downsampling_factor: int
    scaling_factor: float = 1.0


class DiffusersAutoencoder(nn.Module):
    """A diffusers image autoencoder of ``WRAPPED``, unchanged inside (``self.module``), seen through
    vaekit's interface."""

    kind = "autoencoder"
    latent_layout = "spatial"
    has_likelihood = False
    conditional = False
    value_range = (-1.0, 1.0)
    registry_name = "diffusers"
    regularizer = "kl"

    def __init__(self, module: nn.Module):
        super().__init__()
        name = type(module).__name__
        if name not in WRAPPED:
            raise VaekitError(unsupported(name))
        self.module = module.eval()
        self.class_name = name
        with torch.no_grad():  # 128 pixels: the side of one latent for the largest factor diffusers ships
            probe = self.encode(torch.zeros(1, 3, 128, 128, device=_device_of(module))).mean
        scaling = getattr(module.config, "scaling_factor", None)
        self.config = WrappedConfig(name, probe.shape[1], 128 // probe.shape[-1], 1.0 if scaling is None else scaling)

    @property
    def downsampling_factor(self) -> int:
        return self.config.downsampling_factor

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.downsampling_factor
        return self.config.latent_channels, -(-height // f), -(-width // f)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """The posterior of images ``x`` ``(B, 3, H, W)`` in [-1, 1]: the class's own latent distribution, or a
        point mass at its latent for deterministic encoders (TAESD, DC-AE, RAE)."""
        name = self.class_name
        if name in FRAMES:
            dist = self.module.encode(x.unsqueeze(2)).latent_dist
            return DiagonalGaussian(dist.mean[:, :, 0], dist.logvar[:, :, 0])
        if name == "AutoencoderTiny":
            return _point(self.module.encode(x).latents)
        if name == "AutoencoderDC":
            return _point(self.module.encode(x).latent)
        if name == "AutoencoderRAE":
            return _point(self.module.encode((x + 1) / 2).latent)  # RAE takes [0, 1] images
        dist = self.module.encode(x).latent_dist
        return DiagonalGaussian(dist.mean, dist.logvar)

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Images in [-1, 1] (not clipped) from raw latents ``z``; ``size`` crops (or, for RAE, whose decoder
        gives its own size, resizes) the images to ``(H, W)``."""
        name = self.class_name
        z = z.contiguous()  # RAE's decoder reshapes it with .view (a rotated latent is a strided view)
        if name in FRAMES:
            images = self.module.decode(z.unsqueeze(2)).sample[:, :, 0]
        elif name == "AutoencoderRAE":
            images = self.module.decode(z).sample * 2 - 1
        elif name == "ConsistencyDecoderVAE":
            generator = torch.Generator(device=z.device).manual_seed(0)
            images = self.module.decode(z, generator=generator).sample
        else:
            images = self.module.decode(z).sample
        if size is None or tuple(images.shape[-2:]) == tuple(size):
            return images
        if name == "AutoencoderRAE":
            return F.interpolate(images, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
        return images[..., : size[0], : size[1]]

    def reconstruct(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        posterior = self.encode(x)
        return self.decode(posterior.sample() if sample else posterior.mode(), size=x.shape[2:])

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents → what the family's diffusion model trains on (the table of the module docstring)."""
        name, config = self.class_name, self.module.config
        if name in SCALED:
            return z * self.config.scaling_factor
        if name in FRAMES:
            mean, std = _channel_statistics(config, z)
            return (z - mean) / std
        if name == "AutoencoderKLFlux2":
            mean, std = _batch_norm_statistics(self.module, z)
            return (_patchify(z) - mean) / std
        return z

    def unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of ``scale_latents``."""
        name, config = self.class_name, self.module.config
        if name in SCALED:
            return latents / self.config.scaling_factor
        if name in FRAMES:
            mean, std = _channel_statistics(config, latents)
            return latents * std + mean
        if name == "AutoencoderKLFlux2":
            mean, std = _batch_norm_statistics(self.module, latents)
            return _unpatchify(latents * std + mean)
        return latents


def _point(z: torch.Tensor) -> DiagonalGaussian:
    return DiagonalGaussian(z, torch.zeros_like(z), deterministic=True)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _channel_statistics(config, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1)
    mean = torch.tensor(config.latents_mean, dtype=like.dtype, device=like.device).view(shape)
    std = torch.tensor(config.latents_std, dtype=like.dtype, device=like.device).view(shape)
    return mean, std


def _batch_norm_statistics(module: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX.2's normalisation: the running statistics of the model's batch norm (read, never updated)."""
    norm = module.bn
    mean = norm.running_mean.view(1, -1, 1, 1).to(like)
    std = torch.sqrt(norm.running_var.view(1, -1, 1, 1) + module.config.batch_norm_eps).to(like)
    return mean, std


def _patchify(z: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` → ``(B, 4C, h/2, w/2)``, each 2×2 neighbourhood's values as channels (FLUX.2's order)."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def _unpatchify(latents: torch.Tensor) -> torch.Tensor:
    b, c4, h, w = latents.shape
    return latents.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, h * 2, w * 2)


def unsupported(class_name: str) -> str:
    return (f"vaekit cannot load a diffusers {class_name}: it loads the image autoencoders "
            f"{', '.join(sorted((*NATIVE, *WRAPPED)))}")


def load_wrapped(model_dir, class_name: str, device="cpu") -> DiffusersAutoencoder:
    """The diffusers class ``class_name`` from its folder (``from_pretrained``), wrapped, in eval mode."""
    import diffusers

    if class_name not in WRAPPED:
        raise VaekitError(unsupported(class_name))
    try:
        module = getattr(diffusers, class_name).from_pretrained(str(model_dir))
    except (OSError, ValueError, RuntimeError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise VaekitError(f"{model_dir}: diffusers could not load its {class_name} ({reason})") from None
    return DiffusersAutoencoder(module.to(device)).eval()
