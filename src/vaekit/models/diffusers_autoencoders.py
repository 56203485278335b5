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
AutoencoderRAE             z as it is: the model normalises its encoder's tokens itself inside encode
                           ((tokens − latents_mean) / (latents_std + 1e-5) · scaling_factor) and undoes it
                           inside decode (models/autoencoders/autoencoder_rae.py); ``vaekit calibrate``
                           measures and stores per-channel latents_mean/latents_std there
ConsistencyDecoderVAE      z · scaling_factor (stable_diffusion/pipeline_stable_diffusion.py); decoded by
                           its consistency model with a fixed generator (seed 0), so decoding is repeatable
=========================  ==============================================================================

Each rule is one ``LatentNorm`` (``latent_norm``; ``models.latent_scale``), the hand-off every vaekit
model has: SCALED ones are ``scaling_factor``, the video ones ``latents_mean``/``latents_std``, FLUX.2's
``patch_size`` 2 with its batch norm's running mean and √(running_var + eps) as the per-channel statistics,
TAESD's and RAE's the identity. Exports, latents files and Stage B's samples record and undo it as they do
any model's.

``AutoencoderKL`` and ``VQModel`` are not wrapped: vaekit loads their weights into its own models, which
train, tile and run the fast CPU path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.errors import VaekitError
from vaekit.models.distributions import DiagonalGaussian
from vaekit.models.latent_scale import LatentNorm

SCALED = {"AsymmetricAutoencoderKL", "AutoencoderDC", "AutoencoderKLHunyuanImage", "ConsistencyDecoderVAE"}
"""Families whose pipelines multiply the raw latent by ``scaling_factor``."""
AS_IS = {"AutoencoderTiny", "AutoencoderRAE"}
FRAMES = {"AutoencoderKLQwenImage", "AutoencoderKLWan"}
"""Video autoencoders: an image is one frame of ``(B, C, T, H, W)``."""
WRAPPED = SCALED | AS_IS | FRAMES | {"AutoencoderKLFlux2"}
NATIVE = ("AutoencoderKL", "VQModel")
POINT = {"AutoencoderTiny", "AutoencoderDC", "AutoencoderRAE"}
"""Deterministic encoders: the posterior is a point mass at the latent."""

NOT_CALIBRATED = {
    "AutoencoderKLFlux2": "FLUX.2's normalisation is its batch norm's running statistics (bn.running_mean, "
    "bn.running_var), stored in the weights that its transformer was trained with, not a config field; vaekit does "
    "not rewrite weights",
    "AutoencoderTiny": "TAESD's latents are already in the scaled space of the VAE it distils (the one its diffusion "
    "model was trained in); its pipelines apply no factor, so there is no field to set",
}
"""Families whose convention has no field for ``vaekit calibrate`` to write, and why."""


@dataclass
class WrappedConfig:
    """What vaekit's commands read from a model's config."""

    class_name: str
    latent_channels: int
    """Of the raw latent (FLUX.2's diffusion model sees 4× as many, at half the side)."""
    downsampling_factor: int
    scaling_factor: float = 1.0
    in_channels: int = 3
    sample_size: int | None = None
    """The image side the class was configured for, where its config records one (``vaekit calibrate``'s
    default resolution)."""


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
        side = getattr(module.config, "sample_size", None)
        # RAE resizes every image to its encoder's input: its token grid is fixed, and a latent position is
        # the decoder's patch of the image it gives (patch_size · grid pixels a side)
        factor = module.config.patch_size if name == "AutoencoderRAE" else 128 // probe.shape[-1]
        if name == "AutoencoderRAE":
            side = module.decoder_image_size
        self.config = WrappedConfig(name, probe.shape[1], factor, 1.0 if scaling is None else scaling,
                                    sample_size=side if isinstance(side, int) else None)

    @property
    def downsampling_factor(self) -> int:
        return self.config.downsampling_factor

    @property
    def deterministic(self) -> bool:
        """The posterior is a point mass (TAESD, DC-AE, RAE): an export stores no log-variance."""
        return self.class_name in POINT

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """The raw latent's shape for images ``(height, width)``; RAE's is its fixed token grid whatever the size."""
        if self.class_name == "AutoencoderRAE":
            grid = int(round(self.module.num_patches ** 0.5))
            return self.config.latent_channels, grid, grid
        f = self.downsampling_factor
        return self.config.latent_channels, -(-height // f), -(-width // f)

    def labels_for(self, labels: torch.Tensor | None) -> None:
        """No wrapped class is class-conditional: ``encode``/``decode`` take no labels (vaekit's contract)."""
        return None

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> DiagonalGaussian:
        """The posterior of images ``x`` ``(B, 3, H, W)`` in [-1, 1]: the class's own latent distribution, or a
        point mass at its latent for deterministic encoders (TAESD, DC-AE, RAE). ``labels`` is the contract's
        argument (``labels_for`` gives None: no wrapped class is conditional); labels given are refused."""
        _refuse_labels(labels)
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

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None,
               size: tuple[int, int] | None = None) -> torch.Tensor:
        """Images in [-1, 1] (not clipped) from raw latents ``z``; ``size`` crops (or, for RAE, whose decoder
        gives its own size, resizes) the images to ``(H, W)``. ``labels``: as ``encode``'s."""
        _refuse_labels(labels)
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

    @property
    def latent_norm(self) -> LatentNorm:
        """The family's normalisation (the table of the module docstring) as a ``LatentNorm``, read from the
        model's config (FLUX.2: its batch norm's running statistics) every time it is asked for."""
        name, config = self.class_name, self.module.config
        if name in SCALED:
            return LatentNorm(float(config.scaling_factor))
        if name in FRAMES:
            return LatentNorm(1.0, None, tuple(map(float, config.latents_mean)), tuple(map(float, config.latents_std)))
        if name == "AutoencoderKLFlux2":
            norm = self.module.bn
            std = torch.sqrt(norm.running_var.double() + config.batch_norm_eps)
            return LatentNorm(1.0, None, tuple(norm.running_mean.double().tolist()), tuple(std.tolist()), patch_size=2)
        return LatentNorm()

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents → what the family's diffusion model trains on (the table of the module docstring)."""
        return self.latent_norm.scale(z)

    def unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The inverse of ``scale_latents``."""
        return self.latent_norm.unscale(latents)

    def calibrated_fields(self, channel_mean: torch.Tensor, channel_std: torch.Tensor, std: float) -> dict:
        """The config fields that give unit-std normalised latents on measured data, in the family's own
        convention: ``channel_mean``/``channel_std`` are per channel and ``std`` pooled over channels, of the
        latents ``scale_latents`` gives now. SCALED: ``scaling_factor`` / std; the video families: z's own
        per-channel mean and std (latents_mean + latents_std · mean, latents_std · std); RAE: the statistics
        its own encode applies (``rae_statistics``; they live in its weights too: ``set_rae_statistics``).
        Empty for the families of ``NOT_CALIBRATED``."""
        name, config = self.class_name, self.module.config
        if name in SCALED:
            return {"scaling_factor": float(config.scaling_factor) / std}
        if name in FRAMES:
            mean = torch.tensor(config.latents_mean, dtype=torch.float64)
            scale = torch.tensor(config.latents_std, dtype=torch.float64)
            return {"latents_mean": (mean + scale * channel_mean.double().cpu()).tolist(),
                    "latents_std": (scale * channel_std.double().cpu()).tolist()}
        if name == "AutoencoderRAE":
            mean, scale = rae_statistics(self.module, channel_mean, channel_std)
            return {"latents_mean": mean.float().tolist(), "latents_std": scale.float().tolist()}  # as stored
        return {}


RAE_EPS = 1e-5
"""What diffusers' AutoencoderRAE adds to ``latents_std`` before dividing by it."""


def rae_statistics(module: nn.Module, channel_mean: torch.Tensor,
                   channel_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``latents_mean``/``latents_std`` (float64, ``(C, 1, 1)``, or ``(C, h, w)`` where the current ones are
    per element, as RAE's published statistics are) that make an ``AutoencoderRAE``'s ``encode`` give latents of
    mean 0 and std 1 per channel on the images measured. ``channel_mean``/``channel_std`` ``(C,)`` are of what it
    gives now: out = s·(z − m₀)/(σ₀ + ε) with s its ``scaling_factor``; the new m₁ = m₀ + μ·(σ₀ + ε)/s and
    σ₁ + ε = σ·(σ₀ + ε) give (out − μ)/σ. Decoding undoes them, so reconstructions do not change."""
    if not bool((channel_std > 0).all()):
        raise VaekitError("a latent channel has no spread: per-channel statistics cannot normalise it")
    mean0 = module._latents_mean.detach().double().cpu()
    std0 = module._latents_std.detach().double().cpu() + RAE_EPS
    mu = channel_mean.detach().double().cpu().view(-1, 1, 1)
    sigma = channel_std.detach().double().cpu().view(-1, 1, 1)
    return mean0 + mu * std0 / float(module.config.scaling_factor), sigma * std0 - RAE_EPS


def set_rae_statistics(module: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Store ``latents_mean``/``latents_std`` in an ``AutoencoderRAE`` where diffusers keeps them: its config
    and its persistent buffers (both are saved, and ``from_pretrained`` needs them to agree in shape)."""
    mean, std = mean.detach().float().cpu(), std.detach().float().cpu()  # the config says what the buffers hold
    module.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    device = module._latents_mean.device
    module._latents_mean = mean.to(device)
    module._latents_std = std.to(device)


def _refuse_labels(labels: torch.Tensor | None) -> None:
    if labels is not None:
        raise VaekitError("a wrapped diffusers autoencoder is not class-conditional: encode/decode take no labels "
                          "(pass model.labels_for(labels), which is None)")


def _point(z: torch.Tensor) -> DiagonalGaussian:
    return DiagonalGaussian(z, torch.zeros_like(z), deterministic=True)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def unsupported(class_name: str) -> str:
    return (f"vaekit cannot load a diffusers {class_name}: it loads the image autoencoders "
            f"{', '.join(sorted((*NATIVE, *WRAPPED)))}")


def weights_variant(model_dir) -> str | None:
    """The variant of a folder whose only weights are a variant's (``diffusion_pytorch_model.fp16.safetensors``,
    as hub repositories ship them beside or instead of the full-precision file): "fp16"; None when the plain
    weights are there. Several variants and no plain file: an error naming them."""
    folder = Path(model_dir)
    if any((folder / f"diffusion_pytorch_model.{ext}").is_file() for ext in ("safetensors", "bin")):
        return None
    variants = sorted({path.name.split(".")[1] for path in folder.glob("diffusion_pytorch_model.*.safetensors")
                       if path.name.count(".") == 2})
    if len(variants) > 1:
        raise VaekitError(f"{model_dir} holds the weights of several variants ({', '.join(variants)}) and no plain "
                          "diffusion_pytorch_model.safetensors: keep the one to load")
    return variants[0] if variants else None


def load_wrapped(model_dir, class_name: str, device="cpu") -> DiffusersAutoencoder:
    """The diffusers class ``class_name`` from its folder (``from_pretrained``; a folder holding only one
    variant's weights, e.g. fp16, loads that variant, in float32), wrapped, in eval mode."""
    import diffusers

    if class_name not in WRAPPED:
        raise VaekitError(unsupported(class_name))
    try:
        module = getattr(diffusers, class_name).from_pretrained(str(model_dir), variant=weights_variant(model_dir),
                                                                 torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise VaekitError(f"{model_dir}: diffusers could not load its {class_name} ({reason})") from None
    return DiffusersAutoencoder(module.to(device)).eval()
