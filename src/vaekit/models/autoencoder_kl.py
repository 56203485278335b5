"""The KL-regularised convolutional autoencoder of latent diffusion (LDM, Stable Diffusion).

Parameter names are those of diffusers' ``AutoencoderKL``, so its state dicts load without conversion
(``io/convert.py`` handles the original LDM/CompVis names). Images are ``(B, C, H, W)`` in [-1, 1];
latents are ``(B, c, H/f, W/f)`` with f = 2^(levels - 1). The encoder and decoder are
``models.blocks``', shared with the VQ model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from vaekit.models.blocks import ConvAutoencoder, ConvAutoencoderConfig, Decoder, Encoder
from vaekit.models.distributions import DiagonalGaussian
from vaekit.models.fastconv import Conv2d, to_channels_last
from vaekit.registry import MODELS


@dataclass
class AutoencoderKLConfig(ConvAutoencoderConfig):
    """diffusers' ``AutoencoderKL`` config (its field names and defaults: Stable Diffusion's VAE)."""

    latent_permutation: int | None = None
    """A control for diffusability studies, not for use: scramble the latent positions by a fixed random
    permutation (from this seed) after encoding and restore them before decoding. Reconstructions are
    unchanged; the latent space loses its spatial structure (what a denoiser's convolutions rely on)."""


class AutoencoderKLOutput(NamedTuple):
    posterior: DiagonalGaussian
    z: torch.Tensor
    """The sampled latent (or the mode), before any latent regulariser changed what the decoder got."""
    reconstruction: torch.Tensor
    target: torch.Tensor | None = None
    """The image the reconstruction is compared with when a latent regulariser changed it (else x)."""
    downsampled_reconstruction: torch.Tensor | None = None
    """Scale equivariance: the decoded down-sampled latent, compared with ``downsampled_target``."""
    downsampled_target: torch.Tensor | None = None


@MODELS.register("autoencoder-kl", AutoencoderKLConfig)
class AutoencoderKL(ConvAutoencoder):
    """Encoder → diagonal Gaussian over ``(c, H/f, W/f)`` → decoder. Images in [-1, 1]."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, double_z=True)
        self.decoder = Decoder(config)
        channels = 2 * config.latent_channels
        self.quant_conv = Conv2d(channels, channels, 1) if config.use_quant_conv else None
        self.post_quant_conv = (Conv2d(config.latent_channels, config.latent_channels, 1)
                                if config.use_post_quant_conv else None)
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = config.gradient_checkpointing

    def encoder_modules(self):
        return [self.encoder] + ([self.quant_conv] if self.quant_conv is not None else [])

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> DiagonalGaussian:
        """x: ``(B, C, H, W)`` in [-1, 1] -> q(z|x) over ``(B, c, ⌈H/f⌉, ⌈W/f⌉)``."""
        self._check_input(x)
        moments = self._finite(self.encoder, to_channels_last(self.pad_to_multiple(x)))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return self.posterior_from(moments.contiguous())

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
        """z: ``(B, c, h, w)`` -> images ``(B, C, f·h, f·w)``, cropped to ``size`` = (H, W) when given."""
        self._check_latent(z)
        return self._decode_trunk(self.decoder_input(z), size)

    def _positions(self, z: torch.Tensor) -> torch.Tensor:
        """The permutation of the ``h·w`` latent positions of ``latent_permutation`` (for z's size)."""
        generator = torch.Generator().manual_seed(self.config.latent_permutation)
        return torch.randperm(z.shape[2] * z.shape[3], generator=generator).to(z.device)

    def posterior_from(self, moments: torch.Tensor) -> DiagonalGaussian:
        if self.config.latent_permutation is not None:
            flat = moments.flatten(2)
            moments = flat[:, :, self._positions(moments)].reshape(moments.shape)
        return super().posterior_from(moments)

    def decoder_input(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        if self.config.latent_permutation is None:
            return z
        restored = torch.empty_like(z.flatten(2))
        restored[:, :, self._positions(z)] = z.flatten(2)
        return restored.reshape(z.shape)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, sample: bool = True,
                generator: torch.Generator | None = None, transform=None) -> AutoencoderKLOutput:
        """Encode, sample (or take the mode), decode. ``transform``: one batch's latent regularisers
        (``losses.latent_transforms.BatchRegularisers``): what the encoder sees, what the decoder gets and
        its ``target``, and scale equivariance's added down-sampled pair."""
        posterior = self.encode(x if transform is None else transform.encoder_input(x))
        z = posterior.sample(generator) if sample else posterior.mode()
        if transform is None:
            return AutoencoderKLOutput(posterior, z, self.decode(z, size=x.shape[2:]))
        padded = self.pad_to_multiple(x)
        decoder_z, target = transform(z, padded)
        reconstruction = self.decode(decoder_z, size=(x if target is None else target).shape[2:])
        pair = transform.downsampled(z, padded)
        if pair is None:
            return AutoencoderKLOutput(posterior, z, reconstruction, target)
        small = self.decode(pair[0], size=pair[1].shape[2:])
        return AutoencoderKLOutput(posterior, z, reconstruction, target, small, pair[1])

def _preset(name: str, channels: tuple[int, ...], latent: int, **extra) -> None:
    MODELS.register_preset(name, "autoencoder-kl", block_out_channels=channels, latent_channels=latent, **extra)


# Stable Diffusion's VAE (LDM kl-f8) and the LDM paper's other first-stage models (ch 128, ch_mult and
# z_channels from their configs; the attention blocks those put inside f16/f32 levels are not part of
# diffusers' AutoencoderKL, whose only attention is the mid block's).
_preset("kl-f4", (128, 256, 512), 3)
_preset("kl-f8", (128, 256, 512, 512), 4)
_preset("kl-f16", (128, 128, 256, 256, 512), 16)
_preset("kl-f32", (128, 128, 256, 256, 512, 512), 64)
_preset("kl-f8-tiny", (32, 64, 64, 64), 4, layers_per_block=1, norm_num_groups=16, sample_size=64)
