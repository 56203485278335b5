"""The (β-weighted) negative ELBO in nats per example."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vaekit.models.mlp import VAEOutput
from vaekit.registry import LOSSES


@dataclass
class ELBOConfig:
    """The ELBO has no settings of its own: β is the model's (``model.beta``), the warm-up the trainer's."""


@LOSSES.register("elbo", ELBOConfig)
class ELBOLoss(nn.Module):
    """loss = mean over the batch of [ −log p(x|z) + w · KL(q(z|x) ‖ N(0, I)) ], z ~ q(z|x).

    Both terms are summed over data / latent dimensions, so the loss is in nats per example. ``w`` is
    β, or the caller's ``kl_weight`` (β times a warm-up factor). ``negative_elbo`` in the logs is the
    true bound (w = 1) whatever the weight; for a deterministic autoencoder the KL is 0 and the loss is the
    reconstruction term alone.
    """

    has_discriminator = False
    discriminator = None

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    @classmethod
    def for_model(cls, config: ELBOConfig, model: nn.Module) -> "ELBOLoss":
        return cls(beta=getattr(model.config, "beta", 1.0))

    def generator_parameters(self) -> list[nn.Parameter]:
        return []

    def forward(
        self, x: torch.Tensor, output: VAEOutput, kl_weight: float | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        weight = self.beta if kl_weight is None else kl_weight
        reconstruction = -output.likelihood.log_prob(x)
        kl = output.posterior.kl()
        loss = (reconstruction + weight * kl).mean()
        logs = {
            "loss": loss.item(),
            "reconstruction": reconstruction.mean().item(),
            "kl": kl.mean().item(),
            "negative_elbo": (reconstruction + kl).mean().item(),
            "kl_weight": float(weight),
        }
        return loss, logs

