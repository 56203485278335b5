"""The (β-weighted) negative ELBO in nats per example."""

from __future__ import annotations

import torch
from torch import nn

from vaekit.models.mlp import VAEOutput
from vaekit.registry import LOSSES


@LOSSES.register("elbo")
class ELBOLoss(nn.Module):
    """loss = mean over the batch of [ −log p(x|z) + w · KL(q(z|x) ‖ N(0, I)) ], z ~ q(z|x).

    Both terms are summed over data / latent dimensions, so the loss is in nats per example. ``w`` is
    β, or the caller's ``kl_weight`` (β times a warm-up factor). ``negative_elbo`` in the logs is the
    true bound (w = 1) whatever the weight; for a deterministic autoencoder the KL is 0 and the loss is the
    reconstruction term alone.
    """

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

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


@LOSSES.register("pixel-kl")
class PixelKLLoss(nn.Module):
    """The image autoencoder's loss without its perceptual and adversarial terms (LDM's recipe, first
    part): mean over the batch of [ Σ_pixels |x − x̂| (or squared) + w · KL(q(z|x) ‖ N(0, I)) ].

    ``reconstruction`` in the logs is the summed pixel error per example; ``beta`` is the KL weight, so
    the trainer's warm-up scales it like a VAE's β.
    """

    def __init__(self, beta: float = 1e-6, pixel: str = "l1"):
        super().__init__()
        if pixel not in ("l1", "l2"):
            raise ValueError(f"pixel loss must be 'l1' or 'l2', not {pixel!r}")
        self.beta = beta
        self.pixel = pixel

    def forward(self, x: torch.Tensor, output, kl_weight: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        weight = self.beta if kl_weight is None else kl_weight
        difference = output.reconstruction - x
        per_pixel = difference.abs() if self.pixel == "l1" else difference.pow(2)
        reconstruction = per_pixel.flatten(1).sum(1)
        kl = output.posterior.kl()
        loss = (reconstruction + weight * kl).mean()
        logs = {"loss": loss.item(), "reconstruction": reconstruction.mean().item(), "kl": kl.mean().item(),
                "kl_weight": float(weight)}
        return loss, logs
