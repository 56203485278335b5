"""VQ-regularised autoencoders (VQ-GAN's bottleneck in latent diffusion's first stage), with diffusers'
``VQModel`` parameter names, built from the same encoder and decoder as the KL model.

As in LDM (``VQModelInterface``) and diffusers (``VQModel``), ``encode`` gives the continuous
pre-quantisation latent — what a diffusion model is trained on — and ``decode`` quantises first (to the
nearest code) unless ``force_not_quantize``; ``encode_indices`` / ``decode_indices`` work with codes.

The quantiser maps every latent vector to its nearest code (squared L2; cosine when ``l2_normalize``),
passes gradients straight through to the encoder, and is trained by the codebook term ‖q − sg(z)‖² (or,
with ``codebook_ema_decay``, by exponential moving averages of the vectors assigned to each code) plus
β · ‖sg(q) − z‖², the commitment term — β on the commitment term, as taming-transformers' ``legacy=False``
(its legacy default puts β on the codebook term). Codes unused for long can be restarted at random
encoder outputs (``dead_code_threshold``).

The quantiser's forward pass changes nothing: the moving averages and restarts are applied by
``update_codebook`` once per optimizer step, from statistics the training loop has summed over its
micro-batches and processes (the loop owns every collective operation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.models.blocks import ConvAutoencoder, ConvAutoencoderConfig, Decoder, Encoder
from vaekit.models.distributions import DiagonalGaussian
from vaekit.models.fastconv import Conv2d, to_channels_last
from vaekit.registry import MODELS


@dataclass
class VQModelConfig(ConvAutoencoderConfig):
    num_embeddings: int = 8192
    """Codebook size."""
    beta: float = 0.25
    """Weight of the commitment term."""
    codebook_ema_decay: float | None = None
    """Update the codebook by moving averages (VQ-VAE-2) instead of the codebook loss; e.g. 0.99."""
    l2_normalize: bool = False
    """Match and quantise l2-normalised vectors (cosine similarity; ViT-VQGAN)."""
    dead_code_threshold: float | None = None
    """Restart codes whose moving-average use per optimizer step (counted over the global batch) falls
    below this, at random encoder outputs of that batch."""
    scaling_factor: float = 1.0
    """LDM trains on VQ latents unscaled; calibration measures it like the KL model's (models.latent_scale)."""

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
    """codebook + β · commitment: each a mean over the latent's elements (taming's)."""
    commitment: torch.Tensor
    codebook: torch.Tensor
    perplexity: torch.Tensor
    vectors: torch.Tensor
    """The matched encoder vectors ``(B·h·w, c)`` (l2-normalised when the codes are), detached, in example
    order: what the codebook's moving averages and restarts are drawn from."""


def perplexity_of(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code distribution given by ``counts``: K when K codes are used equally."""
    p = counts.double() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of ``(B, c, h, w)`` latents; ``embedding.weight`` is the codebook."""

    EMA_EPSILON = 1e-5
    USAGE_DECAY = 0.99
    NEAREST_CHUNK = 4096
    """Rows matched at a time, so the distance matrix of a large codebook stays small."""

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

    @property
    def updates_codebook(self) -> bool:
        """Whether ``update_codebook`` has anything to do (moving averages or restarts)."""
        return self.ema_decay is not None or self.dead_code_threshold is not None

    def codebook(self) -> torch.Tensor:
        weight = self.embedding.weight
        return F.normalize(weight, dim=1) if self.l2_normalize else weight

    @torch.no_grad()
    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """The index of the nearest code of each row of ``flat`` ``(N, c)``: argmin ‖z − e‖² (no autograd
        graph; ``NEAREST_CHUNK`` rows at a time)."""
        codebook = self.codebook()
        squares = codebook.pow(2).sum(1)[None, :]
        return torch.cat([(squares - 2 * rows @ codebook.T).argmin(1)  # ‖z‖² is the same for every code
                          for rows in flat.split(self.NEAREST_CHUNK)])

    def vectors_of(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, c, h, w)`` → the vectors that are matched to codes ``(B·h·w, c)`` (normalised when the codes are)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return F.normalize(flat, dim=1) if self.l2_normalize else flat

    def forward(self, z: torch.Tensor) -> Quantized:
        b, c, h, w = z.shape
        flat = self.vectors_of(z)
        indices = self.nearest(flat)
        quantized = self.codebook()[indices]
        commitment = F.mse_loss(flat, quantized.detach())
        codebook_loss = (torch.zeros((), device=z.device) if self.ema_decay is not None
                         else F.mse_loss(quantized, flat.detach()))
        counts = torch.bincount(indices, minlength=self.num_embeddings)
        straight_through = flat + (quantized - flat).detach()
        out = straight_through.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return Quantized(out, indices.reshape(b, h, w), self.beta * commitment + codebook_loss, commitment,
                         codebook_loss, perplexity_of(counts), flat.detach())

    def code_sums(self, vectors: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(count, sum of the vectors) per code, ``(K,)`` and ``(K, c)``: what the moving averages take."""
        flat_indices = indices.reshape(-1)
        counts = torch.bincount(flat_indices, minlength=self.num_embeddings).to(vectors.dtype)
        sums = torch.zeros(self.num_embeddings, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
        return counts, sums.index_add_(0, flat_indices, vectors)

    @torch.no_grad()
    def update_codebook(self, counts: torch.Tensor, sums: torch.Tensor, vectors: torch.Tensor, generator) -> int:
        """One optimizer step's codebook update from the global batch's statistics (``code_sums`` summed
        over micro-batches and processes, and its matched ``vectors`` in global example order): the moving
        averages (N ← γN + (1−γ)n, m ← γm + (1−γ)Σz, e = m / N with N Laplace-smoothed, so an unused
        code keeps a finite position), then the restart of codes whose moving-average use per step is
        below the threshold, at rows of ``vectors`` drawn with ``generator`` (a ``torch.Generator`` in the
        same state on every process, so every process makes the same choice). Returns the codes restarted."""
        if self.ema_decay is not None:
            decay = self.ema_decay
            self.ema_count.mul_(decay).add_(counts.to(self.ema_count.dtype), alpha=1 - decay)
            self.ema_weight.mul_(decay).add_(sums.to(self.ema_weight.dtype), alpha=1 - decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + self.EMA_EPSILON) / (total + self.num_embeddings * self.EMA_EPSILON) * total
            self.embedding.weight.copy_(self.ema_weight / smoothed[:, None])
        if self.dead_code_threshold is None:
            return 0
        self.usage.mul_(self.USAGE_DECAY).add_(counts.to(self.usage.dtype), alpha=1 - self.USAGE_DECAY)
        dead = torch.nonzero(self.usage < self.dead_code_threshold).flatten()
        if len(dead) == 0:
            return 0
        rows = torch.randint(0, len(vectors), (len(dead),), generator=generator, device=generator.device)
        self.embedding.weight[dead] = vectors[rows.to(vectors.device)].to(self.embedding.weight.dtype)
        self.usage[dead] = 1.0
        if self.ema_decay is not None:
            self.ema_count[dead] = 1.0
            self.ema_weight[dead] = self.embedding.weight[dead]
        return len(dead)


class VQOutput(NamedTuple):
    posterior: DiagonalGaussian
    """A point mass at the continuous pre-quantisation latent (no KL)."""
    z: torch.Tensor
    """The quantised latent the decoder took."""
    reconstruction: torch.Tensor
    quantized: Quantized


@MODELS.register("vq", VQModelConfig)
class VQModel(ConvAutoencoder):
    """Encoder → 1×1 conv → [vector quantiser] → 1×1 conv → decoder (diffusers' ``VQModel``). Images in
    [-1, 1]; ``encode`` gives the continuous latent (a point-mass posterior), ``decode`` quantises it."""

    regularizer = "vq"
    deterministic = True  # a point-mass posterior: samples are the mean

    def __init__(self, config: VQModelConfig):
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config, double_z=False)
        self.decoder = Decoder(config)
        self.quant_conv = Conv2d(c, c, 1)
        self.post_quant_conv = Conv2d(c, c, 1)
        self.quantize = VectorQuantizer(config.num_embeddings, c, config.beta, config.codebook_ema_decay,
                                        config.l2_normalize, config.dead_code_threshold)
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = config.gradient_checkpointing

    def encoder_modules(self) -> list[nn.Module]:
        """What ``train.decoder_only`` freezes: the encoder, its 1×1 conv and the codebook."""
        return [self.encoder, self.quant_conv, self.quantize]

    def posterior_from(self, moments: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(moments, torch.zeros_like(moments), deterministic=True)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> DiagonalGaussian:
        """x: ``(B, C, H, W)`` in [-1, 1] -> a point mass at the pre-quantisation latent ``(B, c, h, w)``
        (diffusers' ``VQModel.encode(x).latents``)."""
        self._check_input(x)
        moments = self.quant_conv(self._finite(self.encoder, to_channels_last(self.pad_to_multiple(x))))
        return self.posterior_from(moments.contiguous())

    def decoder_input(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """The nearest codes of ``z`` (or ``z`` itself, ``force_not_quantize``)."""
        return z if force_not_quantize else self.quantize(z).z

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None, size: tuple[int, int] | None = None,
               force_not_quantize: bool = False) -> torch.Tensor:
        """z: ``(B, c, h, w)``, quantised to the nearest codes first (diffusers' ``VQModel.decode``) ->
        images ``(B, C, f·h, f·w)``, cropped to ``size``."""
        self._check_latent(z)
        return self._decode_trunk(self.decoder_input(z, force_not_quantize), size)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """The code of every latent position ``(B, h, w)``."""
        z = self.encode(x).mean
        return self.quantize.nearest(self.quantize.vectors_of(z)).reshape(z.shape[0], *z.shape[2:])

    def decode_indices(self, indices: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        codes = self.quantize.codebook()[indices]  # (B, h, w, c)
        return self.decode(codes.permute(0, 3, 1, 2).contiguous(), size=size, force_not_quantize=True)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, sample: bool = True,
                generator=None) -> VQOutput:
        posterior = self.encode(x)
        quantized = self.quantize(posterior.mean)
        return VQOutput(posterior, quantized.z, self._decode_trunk(quantized.z, x.shape[2:]), quantized)


def _preset(name: str, channels: tuple[int, ...], latent: int, codes: int) -> None:
    MODELS.register_preset(name, "vq", block_out_channels=channels, latent_channels=latent, num_embeddings=codes)


# The LDM model zoo's VQ first stages (ch 128, ch_mult, z_channels = embed_dim, n_embed from their configs;
# their attention inside the f16 level is not part of diffusers' VQModel, whose only attention is the mid block's).
_preset("vq-f4", (128, 256, 512), 3, 8192)
_preset("vq-f8", (128, 256, 256, 512), 4, 16384)
_preset("vq-f16", (128, 128, 256, 256, 512), 8, 16384)
