"""The Stage B denoiser: diffusers' ``UNet2DModel`` trained on a VAE's latents with the noise schedule of
diffusers' ``DDPMScheduler`` (latent diffusion's second stage).

A clean latent c₀ is noised to c_t = √ᾱ_t · c₀ + √(1 − ᾱ_t) · ε at a uniformly drawn t, and the network
predicts ε (or, with ``prediction_type: v_prediction``, v = √ᾱ_t · ε − √(1 − ᾱ_t) · c₀) from c_t and t.
The schedule defaults to Stable Diffusion's (``scaled_linear``, β from 0.00085 to 0.012, 1,000 steps).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from vaekit.errors import ConfigError
from vaekit.models.distributions import batch_integers, batch_noise
from vaekit.registry import MODELS

log = logging.getLogger("vaekit")


@dataclass
class DenoiserConfig:
    sample_size: int | None = None
    """Latent side (h = w), from the data."""
    in_channels: int | None = None
    """Latent channels, from the data."""
    block_out_channels: tuple[int, ...] = (64, 128)
    """Channels per U-Net level; each level but the last halves the resolution."""
    layers_per_block: int = 2
    """ResNet blocks per encoder level (the decoder has one more)."""
    attention_levels: tuple[int, ...] = (1,)
    """The levels (0 = the first) whose blocks have self-attention."""
    norm_num_groups: int = 32
    """GroupNorm groups (every channel count must divide by it)."""
    attention_head_dim: int = 8
    """Channels per attention head in the U-Net's attention blocks."""
    class_conditional: bool = False
    """Condition on the data's class labels (a learned embedding added to the time embedding)."""
    num_classes: int | None = None
    """From the data when ``class_conditional``."""
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    """What the network predicts: the noise ε, or v = √ᾱ·ε − √(1 − ᾱ)·c₀ (v_prediction)."""
    num_train_timesteps: int = 1000
    """Timesteps of the training schedule T; samplers take 1 to T steps."""
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"
    """How β goes from beta_start to beta_end: scaled_linear (Stable Diffusion's), linear, or squaredcos_cap_v2 (cosine)."""
    beta_start: float = 0.00085
    """The noise schedule's first β (diffusers' DDPMScheduler)."""
    beta_end: float = 0.012
    """The noise schedule's last β."""
    rescale_betas_zero_snr: bool = False
    """Rescale the schedule to zero terminal SNR (Lin et al. 2023; diffusers' option): pure noise is then the
    true marginal at the last timestep, which removes the mean bias of DDIM sampling on SD's schedule.
    Needs ``prediction_type: v_prediction`` (ε is unidentifiable where the signal is gone)."""
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"
    """Which timesteps a sampler with fewer steps visits (diffusers' option): "leading" (SD's; never the last
    timestep), "trailing" (starts at the last one: pair it with zero terminal SNR), "linspace"."""
    time_shift: float | Literal["auto", "none"] = "none"
    """RAE's dimension-dependent shift (bytetriper/RAE ``time_dist_shift``): every timestep's signal-to-noise
    ratio is divided by α², ᾱ → ᾱ / (ᾱ + α²·(1 − ᾱ)), for training and sampling alike; on RAE's linear flow
    path that is its t → α·t / (1 + (α − 1)·t). "auto": α = √(C·h·w / time_shift_base_dim), at least 1 (RAE
    asserts α ≥ 1); a number: α; "none": no shift. See docs/diffusion.md."""
    time_shift_base_dim: int = 4096
    """The latent size C·h·w at which "auto" gives α = 1 (RAE's ``time_dist_shift_base``: 4 × 32 × 32, SD's
    latents at 256²)."""
    widen_to_latents: bool = False
    """Multiply every level's width by the smallest integer that makes the first level at least as wide as the
    latents have channels (RAE: a denoiser narrower than a token cannot fit wide latents)."""

    def __post_init__(self) -> None:
        if isinstance(self.time_shift, float) and not self.time_shift > 0:
            raise ValueError(f"time_shift must be positive (or auto, or none), got {self.time_shift}")
        if self.time_shift_base_dim < 1:
            raise ValueError(f"time_shift_base_dim must be at least 1, got {self.time_shift_base_dim}")
        if self.rescale_betas_zero_snr and self.prediction_type != "v_prediction":
            raise ValueError("rescale_betas_zero_snr=true needs prediction_type=v_prediction: at zero terminal SNR "
                             "the noise cannot be predicted from pure noise")


class DenoiserOutput(NamedTuple):
    prediction: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor


def time_shift(config: DenoiserConfig) -> float:
    """α of ``config.time_shift``: "auto" is √(C·h·w / time_shift_base_dim) of the latents, at least 1."""
    if config.time_shift == "none":
        return 1.0
    if config.time_shift == "auto":
        size = config.in_channels * config.sample_size ** 2
        return max(1.0, math.sqrt(size / config.time_shift_base_dim))
    return float(config.time_shift)


def shift_alphas_cumprod(alphas_cumprod: torch.Tensor, shift: float) -> torch.Tensor:
    """ᾱ with every SNR ᾱ / (1 − ᾱ) divided by ``shift``²: ᾱ / (ᾱ + shift²·(1 − ᾱ))."""
    return alphas_cumprod / (alphas_cumprod + shift ** 2 * (1 - alphas_cumprod))


def shifted_betas(config: DenoiserConfig) -> list[float] | None:
    """The β of the config's schedule with its time shift applied (diffusers' ``trained_betas``), or None
    when there is no shift. Computed in float64 from the unshifted scheduler's ᾱ."""
    from diffusers import DDPMScheduler

    shift = time_shift(config)
    if shift == 1.0:
        return None
    base = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                         beta_start=config.beta_start, beta_end=config.beta_end,
                         rescale_betas_zero_snr=config.rescale_betas_zero_snr)
    shifted = shift_alphas_cumprod(base.alphas_cumprod.double(), shift)
    previous = torch.cat([torch.ones(1, dtype=shifted.dtype), shifted[:-1]])
    return (1 - shifted / previous).tolist()


def _unet(config: DenoiserConfig) -> nn.Module:
    from diffusers import UNet2DModel

    levels = len(config.block_out_channels)
    attention = set(config.attention_levels)
    down = tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(levels)))
    return UNet2DModel(sample_size=config.sample_size, in_channels=config.in_channels,
                       out_channels=config.in_channels, block_out_channels=tuple(config.block_out_channels),
                       layers_per_block=config.layers_per_block, down_block_types=down, up_block_types=up,
                       norm_num_groups=config.norm_num_groups, attention_head_dim=config.attention_head_dim,
                       num_class_embeds=config.num_classes if config.class_conditional else None)


@MODELS.register("latent-unet", DenoiserConfig)
class LatentDenoiser(nn.Module):
    """A denoiser ε_θ(c_t, t[, y]) on VAE latents: diffusers' UNet2DModel + DDPMScheduler's noise schedule."""

    kind = "denoiser"
    value_range = (-math.inf, math.inf)
    """Latents are taken as exported (already scaled); never mapped."""
    loss_name = "diffusion"
    adam_betas = (0.9, 0.999)
    has_likelihood = False
    scales_latents = False
    channel_statistics = False

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        if config.in_channels is None or config.sample_size is None:
            raise ConfigError("model.in_channels and model.sample_size come from the latents (data.name=latents)")
        if config.class_conditional and not config.num_classes:
            raise ConfigError("model.class_conditional=true needs labelled latents (model.num_classes)")
        levels = len(config.block_out_channels)
        bad = [level for level in config.attention_levels if not 0 <= level < levels]
        if bad:
            raise ConfigError(f"model.attention_levels {list(config.attention_levels)}: level {bad[0]} does not exist "
                              f"(the U-Net has {levels} levels, 0 to {levels - 1})")
        if config.sample_size % 2 ** (levels - 1):
            raise ConfigError(f"latents of side {config.sample_size} cannot be halved {levels - 1} times: use fewer "
                              "model.block_out_channels levels")
        if config.block_out_channels[0] < config.in_channels:
            log.warning("the denoiser's first level is %d channels wide and the latents have %d: narrower than a "
                        "token, which RAE (Zheng et al. 2025) found cannot fit wide latents; model.name=unet-wide or "
                        "model.widen_to_latents=true widens it", config.block_out_channels[0], config.in_channels)
        self.config = config
        self.unet = _unet(config)
        self.scheduler = self.noise_scheduler()

    @property
    def conditional(self) -> bool:
        return self.config.class_conditional

    def labels_for(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        return labels if self.conditional else None

    def noise_scheduler(self, kind: Literal["ddpm", "ddim"] = "ddpm", steps: int | None = None):
        """A fresh diffusers scheduler with this model's training schedule: DDPM (training, ancestral
        sampling) or DDIM (deterministic sampling in fewer steps; ``steps``: how many it will take)."""
        from diffusers import DDIMScheduler, DDPMScheduler

        c = self.config
        settings = dict(num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
                        beta_start=c.beta_start, beta_end=c.beta_end, prediction_type=c.prediction_type,
                        clip_sample=False, rescale_betas_zero_snr=c.rescale_betas_zero_snr,
                        timestep_spacing=c.timestep_spacing, trained_betas=shifted_betas(c))
        if kind == "ddim":
            # SD's offset shifts "leading" timesteps by one; at as many steps as the schedule has, that would
            # ask for t = T, one past its end
            offset = 1 if c.timestep_spacing == "leading" and (steps or 0) < c.num_train_timesteps else 0
            return DDIMScheduler(**settings, set_alpha_to_one=False, steps_offset=offset)
        return DDPMScheduler(**settings)

    @classmethod
    def config_for_data(cls, params: DenoiserConfig, image_shape: tuple[int, int, int], num_classes: int | None,
                        data_name: str) -> dict[str, Any]:
        channels, height, width = image_shape
        if height != width:
            raise ConfigError(f"{data_name} holds {height}×{width} latents; the denoiser takes square ones")
        updates: dict[str, Any] = {}
        for key, value in (("in_channels", channels), ("sample_size", height)):
            current = getattr(params, key)
            if current is None:
                updates[key] = value
            elif current != value:
                raise ConfigError(f"model.{key} is {current} but {data_name} has latents of shape {list(image_shape)}")
        first = params.block_out_channels[0]
        if params.widen_to_latents and first < channels:
            updates["block_out_channels"] = tuple(width * -(-channels // first) for width in params.block_out_channels)
        if params.class_conditional:
            if num_classes is None:
                raise ConfigError(f"model.class_conditional=true, but {data_name} has no labels (labels come from "
                                  "the sub-folders of the exported images)")
            if params.num_classes is None:
                updates["num_classes"] = num_classes
        return updates

    def encoder_modules(self) -> list[nn.Module]:
        raise ConfigError("train.decoder_only applies to autoencoders, not to the denoiser")

    def forward(self, latents: torch.Tensor, labels: torch.Tensor | None = None, generator=None) -> DenoiserOutput:
        """One training example per latent: t ~ U{0, ..., T−1}, ε ~ N(0, I) (from ``generator``: a
        ``torch.Generator`` or the trainer's per-global-batch noise), the prediction and its target."""
        t = batch_integers(generator, self.config.num_train_timesteps, latents.shape[0], latents.device)
        noise = batch_noise(generator, latents.shape, latents.device, latents.dtype)
        prediction = self.predict(self.add_noise(latents, noise, t), t, labels)
        return DenoiserOutput(prediction, self.target(latents, noise, t), t)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """c_t = √ᾱ_t · c₀ + √(1 − ᾱ_t) · ε: diffusers' ``DDPMScheduler.add_noise``."""
        return self.scheduler.add_noise(latents, noise, t)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε, or v = √ᾱ_t · ε − √(1 − ᾱ_t) · c₀ (diffusers' ``get_velocity``)."""
        if self.config.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(latents, noise, t)

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(noisy, t, class_labels=labels if self.conditional else None).sample

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, steps: int = 50, scheduler: Literal["ddpm", "ddim"] = "ddim",
               labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents from ``noise`` ``(n, c, h, w)`` by ``steps`` steps of diffusers' DDIM (deterministic) or
        DDPM (ancestral, noise from ``generator``) sampler."""
        if self.conditional and labels is None:
            raise ConfigError("this denoiser is class-conditional: give the classes to sample")
        if not 1 <= steps <= self.config.num_train_timesteps:
            raise ConfigError(f"{steps} sampler steps: give 1 to {self.config.num_train_timesteps}, the length of the "
                              "schedule the denoiser was trained on")
        sampler = self.noise_scheduler(scheduler, steps)
        sampler.set_timesteps(steps, device=noise.device)
        x = noise * sampler.init_noise_sigma
        for t in sampler.timesteps:
            prediction = self.predict(sampler.scale_model_input(x, t), t.expand(len(x)), labels)
            extra = {"generator": generator} if scheduler == "ddpm" else {}
            x = sampler.step(prediction, t, x, **extra).prev_sample
        return x

    def snapshot(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Samples from fixed noise (shaped like the held-out latents ``x``, seed 0) in 20 DDIM steps: the same
        noise every epoch, so the snapshots show how the samples change as the model trains."""
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device, x.dtype)
        return self.sample(noise, steps=20, scheduler="ddim", labels=labels)


def _preset(name: str, **values) -> None:
    MODELS.register_preset(name, "latent-unet", **values)


# Sizes: tiny trains on 2 CPU cores in minutes; small is a laptop-GPU model; sd is Stable Diffusion's U-Net
# widths and depth (320 → 1280, attention on the three highest-resolution levels) without text cross-attention.
_preset("unet-tiny", block_out_channels=(32, 64), layers_per_block=1, attention_levels=(1,), norm_num_groups=8)
_preset("unet-small", block_out_channels=(64, 128, 256), layers_per_block=2, attention_levels=(1, 2))
# unet-tiny's shape, every width multiplied until the first level is as wide as the latents have channels
# (768 channels of DINOv2-B's RAE latents: 768, 1536), with 64-channel attention heads.
_preset("unet-wide", block_out_channels=(32, 64), layers_per_block=1, attention_levels=(1,), norm_num_groups=8,
        attention_head_dim=64, widen_to_latents=True)
_preset("unet-sd", block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_levels=(0, 1, 2),
        attention_head_dim=64)
