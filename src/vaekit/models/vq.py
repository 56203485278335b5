"""VQ-regularised autoencoders (VQ-GAN's bottleneck in latent diffusion's first stage): the KL family's
encoder and decoder around a vector quantiser, with diffusers' ``VQModel`` parameter names.

The quantiser maps every latent vector to its nearest code (squared L2; cosine when ``l2_normalize``),
passes gradients straight through to the encoder, and is trained by the codebook term
‖q − sg(z)‖² (or, with ``codebook_ema_decay``, by exponential moving averages of the vectors assigned to
each code) plus β · ‖sg(q) − z‖², the commitment term — β on the commitment term, as taming-transformers'
``legacy=False`` (its legacy default puts β on the codebook term). Codes unused for long can be restarted
at random encoder outputs (``dead_code_threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from vaekit.models.distributions import DiagonalGaussian
from vaekit.models.fastconv import Conv2d, to_channels_last
from vaekit.registry import MODELS


@dataclass
class VQModelConfig(AutoencoderKLConfig):
    num_embeddings: int = 8192
    """Codebook size."""
    beta: float = 0.25
    """Weight of the commitment term."""
    codebook_ema_decay: float | None = None
    """Update the codebook by moving averages (VQ-VAE-2) instead of the codebook loss; e.g. 0.99."""
    l2_normalize: bool = False
    """Match and quantise l2-normalised vectors (cosine similarity; ViT-VQGAN)."""
    dead_code_threshold: float | None = None
    """Restart codes whose moving-average use per step falls below this, at random encoder outputs."""
    scaling_factor: float = 1.0
    """LDM trains on VQ latents unscaled."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_embeddings < 2:
            raise ValueError("num_embeddings must be at least 2")
        if self.beta < 0:
            raise ValueError("beta must be non-negative")
        if self.codebook_ema_decay is not None and not 0 < self.codebook_ema_decay < 1:
            raise ValueError("codebook_ema_decay must be between 0 and 1")


class Quantized(NamedTuple):
    z: torch.Tensor
    """The quantised latents ``(B, c, h, w)``, with the straight-through gradient to the encoder."""
    indices: torch.Tensor
    """The code of each position ``(B, h, w)``."""
    loss: torch.Tensor
    commitment: torch.Tensor
    codebook: torch.Tensor
    perplexity: torch.Tensor


def perplexity_of(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code distribution given by ``counts``: K when K codes are used equally."""
    p = counts.double() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of ``(B, c, h, w)`` latents; ``embedding.weight`` is the codebook."""

    EMA_EPSILON = 1e-5

    def __init__(self, num_embeddings: int, dim: int, beta: float = 0.25, ema_decay: float | None = None,
                 l2_normalize: bool = False, dead_code_threshold: float | None = None):
        super().__init__()
        self.num_embeddings, self.dim, self.beta = num_embeddings, dim, beta
        self.ema_decay, self.l2_normalize, self.dead_code_threshold = ema_decay, l2_normalize, dead_code_threshold
        self.embedding = nn.Embedding(num_embeddings, dim)
        self.embedding.weight.data.uniform_(-1 / num_embeddings, 1 / num_embeddings)  # taming's initialisation
        if ema_decay is not None:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_count", torch.ones(num_embeddings))
            self.register_buffer("ema_weight", self.embedding.weight.detach().clone())
        if dead_code_threshold is not None:
            self.register_buffer("usage", torch.ones(num_embeddings))

    def codebook(self) -> torch.Tensor:
        weight = self.embedding.weight
        return F.normalize(weight, dim=1) if self.l2_normalize else weight

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """The index of the nearest code of each row of ``flat`` ``(N, c)``: argmin ‖z − e‖²."""
        codebook = self.codebook()
        distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)[None, :])
        return distances.argmin(1)

    def forward(self, z: torch.Tensor, generator=None) -> Quantized:
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        if self.l2_normalize:
            flat = F.normalize(flat, dim=1)
        indices = self.nearest(flat.detach())
        quantized = self.codebook()[indices]
        commitment = F.mse_loss(flat, quantized.detach())
        codebook_loss = (torch.zeros((), device=z.device) if self.ema_decay is not None
                         else F.mse_loss(quantized, flat.detach()))
        counts = torch.bincount(indices, minlength=self.num_embeddings)
        if self.training and torch.is_grad_enabled():
            if self.ema_decay is not None:
                self.ema_update(flat.detach(), indices)
            if self.dead_code_threshold is not None:
                self.restart_dead_codes(flat.detach(), counts, generator)
        straight_through = flat + (quantized - flat).detach()
        out = straight_through.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return Quantized(out, indices.reshape(b, h, w), self.beta * commitment + codebook_loss, commitment,
                         codebook_loss, perplexity_of(counts))

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """N ← γN + (1−γ)n, m ← γm + (1−γ)Σz over the vectors assigned to each code (summed over every
        process), e = m / N with N Laplace-smoothed (so an unused code keeps a finite position)."""
        one_hot = F.one_hot(indices, self.num_embeddings).to(flat.dtype)
        counts, sums = one_hot.sum(0), one_hot.T @ flat
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        decay = self.ema_decay
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_weight.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.EMA_EPSILON) / (total + self.num_embeddings * self.EMA_EPSILON) * total
        self.embedding.weight.copy_(self.ema_weight / smoothed[:, None])

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor, counts: torch.Tensor, generator) -> None:
        """Codes whose moving-average use per step (counted over every process) is below the threshold move
        to random encoder outputs of this batch. The rows come from the generator every process holds in
        the same state (the trainer's noise source wraps one), so the processes stay in step; the main
        process's codes are then sent to all."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            counts = counts.clone()
            torch.distributed.all_reduce(counts)  # every process finds the same dead codes
        self.usage.mul_(0.99).add_(counts.to(self.usage.dtype), alpha=0.01)
        dead = torch.nonzero(self.usage < self.dead_code_threshold).flatten()
        if len(dead) == 0:
            return
        shared = generator.generator if hasattr(generator, "generator") else generator
        rows = torch.randint(0, len(flat), (len(dead),), generator=shared, device=flat.device)
        self.embedding.weight[dead] = flat[rows].to(self.embedding.weight.dtype)
        self.usage[dead] = 1.0
        if self.ema_decay is not None:
            self.ema_count[dead] = 1.0
            self.ema_weight[dead] = self.embedding.weight[dead]
        if distributed:
            torch.distributed.broadcast(self.embedding.weight.data, 0)


class VQOutput(NamedTuple):
    posterior: DiagonalGaussian
    """A point mass at the quantised latents (no KL)."""
    z: torch.Tensor
    reconstruction: torch.Tensor
    quantized: Quantized


@MODELS.register("vq", VQModelConfig)
class VQModel(AutoencoderKL):
    """Encoder → 1×1 conv → vector quantiser → 1×1 conv → decoder (diffusers' ``VQModel``). Images in [-1, 1];
    ``encode`` gives the quantised latents (as a point-mass posterior), ``decode`` takes quantised latents."""

    regularizer = "vq"

    def __init__(self, config: VQModelConfig):
        super().__init__(config)
        c = config.latent_channels
        self.encoder.conv_out = Conv2d(config.block_out_channels[-1], c, 3, padding=1)  # no log-variance half
        self.quant_conv = Conv2d(c, c, 1)
        self.post_quant_conv = Conv2d(c, c, 1)
        self.quantize = VectorQuantizer(config.num_embeddings, c, config.beta, config.codebook_ema_decay,
                                        config.l2_normalize, config.dead_code_threshold)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.encoder, self.quant_conv, self.quantize]

    def pre_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's continuous output, before the codebook: ``(B, c, h, w)``."""
        self._check_input(x)
        return self.quant_conv(self._finite(self.encoder, to_channels_last(self.pad_to_multiple(x)))).contiguous()

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> DiagonalGaussian:
        z = self.quantize(self.pre_quantize(x)).z
        return DiagonalGaussian(z, torch.zeros_like(z), deterministic=True)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """The code of every latent position ``(B, h, w)``."""
        return self.quantize(self.pre_quantize(x)).indices

    def decode_indices(self, indices: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        codes = self.quantize.codebook()[indices]  # (B, h, w, c)
        return self.decode(codes.permute(0, 3, 1, 2).contiguous(), size=size)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, sample: bool = True,
                generator=None) -> VQOutput:
        quantized = self.quantize(self.pre_quantize(x), generator)
        posterior = DiagonalGaussian(quantized.z, torch.zeros_like(quantized.z), deterministic=True)
        return VQOutput(posterior, quantized.z, self.decode(quantized.z, size=x.shape[2:]), quantized)


def _preset(name: str, channels: tuple[int, ...], latent: int, codes: int) -> None:
    MODELS.register_preset(name, "vq", block_out_channels=channels, latent_channels=latent, num_embeddings=codes)


# The LDM model zoo's VQ first stages (ch 128, ch_mult, z_channels = embed_dim, n_embed from their configs;
# their attention inside the f16 level is not part of diffusers' VQModel, whose only attention is the mid block's).
_preset("vq-f4", (128, 256, 512), 3, 8192)
_preset("vq-f8", (128, 256, 256, 512), 4, 16384)
_preset("vq-f16", (128, 128, 256, 256, 512), 8, 16384)
