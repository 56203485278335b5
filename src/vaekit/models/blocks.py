"""The parts both image autoencoders of latent diffusion are built from (diffusers keeps ``AutoencoderKL``
and ``VQModel`` as two classes over the same ``Encoder``/``Decoder``): ResNet levels, the mid block with
attention, the encoder and decoder trunks, and ``ConvAutoencoder``, what the two models share around
them (input checks, padding to a multiple of f, float16 overflow recovery, the latent normalisation).

Parameter names are diffusers'. Images are ``(B, C, H, W)`` in [-1, 1]; latents are ``(B, c, H/f, W/f)``
with f = 2^(levels - 1). Input sides that are not multiples of f are padded (edge replication) up to the
next multiple before encoding; ``decode(z, size=(H, W))`` crops the output back.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vaekit.errors import ConfigError, VaekitError
from vaekit.models.base import Autoencoder
from vaekit.models.distributions import DiagonalGaussian
from vaekit.models.fastconv import Conv2d, to_channels_last
from vaekit.models.latent_scale import LatentNorm, check_norm
from vaekit.models.norm import GroupNorm

NORM_EPS = 1e-6


@dataclass
class ConvAutoencoderConfig:
    in_channels: int = 3
    """Image channels (3 for RGB, 1 for grayscale)."""
    out_channels: int = 3
    """Channels of the decoded image (as in_channels)."""
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Channels per level; their count sets the downsampling factor f = 2^(levels - 1)."""
    layers_per_block: int = 2
    """ResNet blocks per encoder level (the decoder has one more)."""
    latent_channels: int = 4
    """Channels c of the latent (c, H/f, W/f)."""
    norm_num_groups: int = 32
    """GroupNorm groups (every channel count must divide by it)."""
    mid_block_add_attention: bool = True
    """Self-attention in the middle block (diffusers' and Stable Diffusion's VAE: true)."""
    use_quant_conv: bool = True
    """The 1×1 convolution after the encoder (diffusers' AutoencoderKL option; true in SD's VAE)."""
    use_post_quant_conv: bool = True
    """The 1×1 convolution before the decoder (true in SD's VAE)."""
    scaling_factor: float = 0.18215
    """Latents for a diffusion model are (z − shift_factor) · scaling_factor, of unit variance (LDM); see
    ``models.latent_scale`` for the convention."""
    shift_factor: float | None = None
    """Subtracted from the latents before scaling (SD3/FLUX); null: none."""
    latents_mean: tuple[float, ...] | None = None
    """Per-channel normalisation, diffusers' spelling: latents = (z − latents_mean) · scaling_factor / latents_std."""
    latents_std: tuple[float, ...] | None = None
    """Per-channel standard deviations, with latents_mean (diffusers' spelling)."""
    sample_size: int = 512
    """Training resolution, recorded for diffusers' config (it sets diffusers' default tile size)."""
    gradient_checkpointing: bool = False
    """Recompute each level's activations in the backward pass instead of keeping them: less memory, about a third more compute."""

    def __post_init__(self) -> None:
        if not self.block_out_channels:
            raise ValueError("block_out_channels needs at least one level")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"every channel count must be divisible by norm_num_groups={self.norm_num_groups}; "
                             f"{bad[0]} is not")
        if self.layers_per_block < 1 or self.latent_channels < 1:
            raise ValueError("layers_per_block and latent_channels must be at least 1")
        check_norm(self.scaling_factor, self.shift_factor, self.latents_mean, self.latents_std)
        if self.latents_mean is not None and len(self.latents_mean) != self.latent_channels:
            raise ValueError(f"latents_mean and latents_std need {self.latent_channels} values, one per latent channel")


class ResnetBlock2D(nn.Module):
    """GroupNorm → SiLU → conv3×3 → GroupNorm → SiLU → conv3×3, plus a (1×1 conv) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(groups, out_channels, eps=NORM_EPS)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = not torch.is_grad_enabled()  # SiLU over the fresh GroupNorm output saves an allocation
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = F.silu(self.norm2(h), inplace=inplace)  # conv1's output is freed before conv2 allocates
        h = self.conv2(h)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h.add_(shortcut) if inplace else shortcut + h  # IEEE addition commutes: same sums


class Attention(nn.Module):
    """Single-head self-attention over all positions (diffusers' names: group_norm, to_q/k/v, to_out.0)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (B, HW, C): a free view of channels-last input, a transposed view of NCHW input.
        normed = self.group_norm(x)
        tokens = (normed.permute(0, 2, 3, 1).reshape(b, h * w, c)
                  if normed.is_contiguous(memory_format=torch.channels_last) and not normed.is_contiguous()
                  else normed.reshape(b, c, h * w).transpose(1, 2))
        # (B, 1 head, HW, C) as strided views, the layout diffusers hands to the same kernel.
        q, k, v = (proj(tokens).view(b, -1, 1, c).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
        # out first, as diffusers adds them: the sum then keeps out's (channels-last) layout, and the
        # convolutions after it round exactly as diffusers' do.
        return out + x


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups), ResnetBlock2D(channels, channels, groups)])
        self.attentions = nn.ModuleList([Attention(channels, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding one row/column at the bottom/right (as LDM and diffusers)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv (which enlarges its input itself: see ``fastconv.Conv2d``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, upsample=2)


class Level(nn.Module):
    """ResNet blocks, then an optional resampler (diffusers' Down/UpEncoderBlock2D names)."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, groups: int, resample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(blocks)])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(out_channels)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(out_channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for resampler in getattr(self, "downsamplers", []) or getattr(self, "upsamplers", []):
            x = resampler(x)
        return x


class _Trunk(nn.Module):
    """Runs its stages with optional gradient checkpointing."""

    gradient_checkpointing = False

    def _run(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)


class Encoder(_Trunk):
    """Image → ``2c`` channels (mean and log-variance, ``double_z``: the KL model) or ``c`` (the VQ model)."""

    def __init__(self, config: ConvAutoencoderConfig, double_z: bool = True):
        super().__init__()
        channels, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            Level(channels[max(i - 1, 0)], channels[i], config.layers_per_block, groups,
                  "down" if i < len(channels) - 1 else None)
            for i in range(len(channels))
        ])
        self.mid_block = MidBlock(channels[-1], groups, config.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(groups, channels[-1], eps=NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = Conv2d(channels[-1], (2 if double_z else 1) * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down_blocks:
            x = self._run(level, x)
        x = self._run(self.mid_block, x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(_Trunk):
    def __init__(self, config: ConvAutoencoderConfig):
        super().__init__()
        channels, groups = list(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = Conv2d(config.latent_channels, channels[0], 3, padding=1)
        self.mid_block = MidBlock(channels[0], groups, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList([
            Level(channels[max(i - 1, 0)], channels[i], config.layers_per_block + 1, groups,
                  "up" if i < len(channels) - 1 else None)
            for i in range(len(channels))
        ])
        self.conv_norm_out = GroupNorm(groups, channels[-1], eps=NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = Conv2d(channels[-1], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        x = self._run(self.mid_block, x)
        for level in self.up_blocks:
            x = self._run(level, x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))




class ConvAutoencoder(Autoencoder):
    """What the KL and VQ autoencoders share around their encoder and decoder. Images in [-1, 1]."""

    value_range = (-1.0, 1.0)
    loss_name = "lpips-gan"
    adam_betas = (0.5, 0.9)
    latent_layout = "spatial"
    has_likelihood = False  # scored by image metrics (PSNR, SSIM, LPIPS, rFID)
    scales_latents = True
    """Both kinds hand latents to a diffusion model, normalised by the config's factors."""

    config: ConvAutoencoderConfig
    encoder: Encoder
    decoder: Decoder

    @classmethod
    def config_for_data(cls, params, image_shape, num_classes, data_name):
        if params.in_channels != image_shape[0]:
            raise ConfigError(
                f"model {cls.registry_name} takes {params.in_channels}-channel images and {data_name} has "
                f"{image_shape[0]} channel(s); set model.in_channels and model.out_channels to {image_shape[0]}, "
                "or data.grayscale=false for a folder")
        return {}

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.downsampling_factor
        return self.config.latent_channels, math.ceil(height / f), math.ceil(width / f)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise VaekitError(
                f"{type(self).__name__} expects images of shape (batch, {self.config.in_channels}, height, width) in "
                f"[-1, 1], got {tuple(x.shape)}"
            )
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise VaekitError(f"cannot encode an image of size {x.shape[3]}×{x.shape[2]}: it has no pixels")

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise VaekitError(f"{type(self).__name__} decodes latents of shape (batch, {self.config.latent_channels}, "
                              f"h, w), got {tuple(z.shape)}")

    def last_decoder_weight(self) -> torch.Tensor:
        """The decoder's output convolution, where the GAN's adaptive weight compares gradients (LDM's)."""
        return self.decoder.conv_out.weight

    def pad_to_multiple(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate the last row/column up to a multiple of f (a no-op when already one)."""
        f = self.downsampling_factor
        pad_h, pad_w = -x.shape[2] % f, -x.shape[3] % f
        return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x

    def _finite(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``network(x)``; in float16, an output that overflowed (inf/NaN: SDXL's VAE does, its activations
        exceed 65504) is recomputed by a float32 copy of the network and a warning says so."""
        out = network(x)
        if out.dtype != torch.float16 or torch.is_grad_enabled() or torch.isfinite(out).all():
            return out
        warnings.warn(f"{type(network).__name__} overflowed float16 (values beyond ±65504); recomputed in float32. "
                      "Use bfloat16, or weights fine-tuned for float16, to avoid the second pass.", stacklevel=3)
        upcast = copy.deepcopy(network).float()
        return upcast(x.float()).to(out.dtype)

    def posterior_from(self, moments: torch.Tensor) -> DiagonalGaussian:
        """The posterior from the encoder's output (after quant_conv): mean and log-variance halves."""
        return DiagonalGaussian.from_parameters(moments)

    def decoder_input(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """What the decoder's 1×1 conv takes for a latent ``z``: ``z`` itself (the VQ model quantises it)."""
        return z

    def _decode_trunk(self, z: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
        """post_quant_conv → decoder, cropped to ``size``."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        images = self._finite(self.decoder, to_channels_last(z)).contiguous()
        return images if size is None else images[:, :, : size[0], : size[1]]

    def reconstruct(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Decode the posterior mode (or a sample) of ``x``, cropped back to ``x``'s size."""
        return self(x, sample=sample).reconstruction

    @property
    def latent_norm(self) -> LatentNorm:
        return LatentNorm.of(self.config)

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """z → latents for a diffusion model (``models.latent_scale``)."""
        return self.latent_norm.scale(z)

    def unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of ``scale_latents``."""
        return self.latent_norm.unscale(latents)

    def to_latents(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode ``x`` and scale: the latents a diffusion model is trained on."""
        posterior = self.encode(x)
        return self.scale_latents(posterior.sample(generator) if sample else posterior.mode())

    def from_latents(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Inverse of ``to_latents``: unscale and decode."""
        return self.decode(self.unscale_latents(latents), size=size)
