"""What every vaekit model declares about itself, so the trainer, evaluation and exploration read
capabilities instead of probing for attributes.

The contract (see also ``encode``/``decode``): ``encode(x, labels=None)`` gives the posterior
(``DiagonalGaussian``), ``decode(z, labels=None)`` an image batch, ``forward`` computes no loss.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn


class Autoencoder(nn.Module):
    kind: ClassVar[str] = "autoencoder"
    """What the model is for ("autoencoder"; Stage B's denoiser is "denoiser"): how it is validated,
    evaluated and explored."""
    registry_name: ClassVar[str]
    """The name the model is registered (and saved, and loaded back) by; set by the registry."""
    value_range: ClassVar[tuple[float, float]]
    """The range of the images it takes and gives; data is mapped onto it, never guessed."""
    loss_name: ClassVar[str]
    """The registered loss it trains with unless the config names another."""
    adam_betas: ClassVar[tuple[float, float]]
    latent_layout: ClassVar[Literal["vector", "spatial"]]
    """``(B, d)`` codes (the small models) or ``(B, c, h, w)`` latents (image autoencoders)."""
    has_likelihood: ClassVar[bool]
    """``decode_distribution(z)`` is p(x|z): scored by likelihood; else by image metrics."""
    deterministic: ClassVar[bool] = False
    """The posterior is a point mass (a plain autoencoder): no KL, no sampling."""
    conditional: ClassVar[bool] = False
    """encode and decode take class labels."""
    regularizer: ClassVar[str] = "kl"
    """What shapes the latent space: "kl" (a Gaussian posterior against the prior) or "vq" (a codebook)."""
    scales_latents: ClassVar[bool] = False
    """Has a ``scaling_factor`` (and ``shift_factor``) for the latents a diffusion model trains on."""
    channel_statistics: ClassVar[bool] = False
    """Normalises its latents per channel inside its own ``encode`` and ``decode`` (RAE's latents_mean /
    latents_std): calibration measures those (``store_channel_statistics``) instead of a scaling factor."""
    frozen_encoder: ClassVar[bool] = False
    """The encoder is a pretrained model that never trains (RAE's): only the decoder learns, and the loss's
    latent regularisers, which shape an encoder's latents, do not apply."""

    config: Any

    def labels_for(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels ``encode``/``decode`` take: the labels for a conditional model, else None."""
        return labels if self.conditional else None

    def snapshot(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """What the training-progression figure shows of ``x`` after an epoch: its reconstruction from the
        posterior mean."""
        return self.decode(self.encode(x, labels).mean, labels)

    def encoder_modules(self) -> list[nn.Module]:
        """What ``train.decoder_only`` freezes: everything that maps an image to its posterior."""
        return [self.encoder]

    @classmethod
    def config_for_data(cls, params: Any, image_shape: tuple[int, int, int], num_classes: int | None,
                        data_name: str) -> dict[str, Any]:
        """The config fields that follow from the data (filled in where unset), or a ConfigError where a
        set one disagrees with it. ``num_classes`` is None for unlabelled data."""
        return {}
