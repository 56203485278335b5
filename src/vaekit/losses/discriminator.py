"""The PatchGAN discriminator of pix2pix / taming-transformers (``NLayerDiscriminator``) and its losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_weights(module: nn.Module) -> None:
    """taming's init: convolutions N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """4×4 convolutions, LeakyReLU(0.2), BatchNorm; one logit per overlapping patch: ``(B, 1, h, w)``."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        sequence: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        multiplier = 1
        for n in range(1, layers + 1):
            previous, multiplier = multiplier, min(2**n, 8)
            stride = 2 if n < layers else 1
            sequence += [nn.Conv2d(channels * previous, channels * multiplier, 4, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(channels * multiplier), nn.LeakyReLU(0.2, True)]
        sequence.append(nn.Conv2d(channels * multiplier, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*sequence)
        self.min_side = 3 * 2 ** layers
        """The smallest image side it takes: each strided layer halves it, the last two layers take 2 off."""
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½ (E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̂))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½ (E[softplus(−D(x))] + E[softplus(D(x̂))]): the non-saturating GAN's cross-entropy."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}
