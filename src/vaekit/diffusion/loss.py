"""The denoising objective: the mean squared error between the denoiser's prediction and its target
(ε, or v), over every latent value of the batch (the "simple" loss of DDPM, which LDM trains with)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vaekit.registry import LOSSES


@dataclass
class DiffusionLossConfig:
    """The ε- (or v-) MSE has no settings of its own: the target is the model's ``prediction_type``."""


@LOSSES.register("diffusion", DiffusionLossConfig)
class DiffusionLoss(nn.Module):
    """‖target − prediction‖², the mean over the batch and every latent value."""

    has_discriminator = False
    discriminator = None
    beta = 0.0  # no KL term: the trainer's KL weight does not apply

    @classmethod
    def for_model(cls, config: DiffusionLossConfig, model: nn.Module) -> "DiffusionLoss":
        return cls()

    def generator_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(self, latents: torch.Tensor, output, kl_weight: float | None = None) -> tuple[torch.Tensor, dict]:
        loss = (output.prediction.float() - output.target.float()).pow(2).mean()
        return loss, {"loss": loss.item()}
