"""Distributions of the encoder (posterior q(z|x)) and the decoder (likelihood p(x|z)).

Every reduction is over all non-batch dimensions, so the same code serves vector latents ``(B, D)`` and
spatial latents ``(B, C, H, W)``. Log-densities and KL are in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))). ``deterministic=True`` makes it a point mass at ``mean`` (KL 0), as
    diffusers' ``DiagonalGaussianDistribution`` does for plain autoencoders.

    The log-variance is clamped to [-30, 20] like diffusers, so exp() can neither underflow to a zero
    variance nor overflow.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor, deterministic: bool = False):
        self.mean = mean
        self.deterministic = deterministic
        if deterministic:
            logvar = torch.full_like(mean, -math.inf)
            self.std = self.var = torch.zeros_like(mean)
        else:
            logvar = torch.clamp(logvar, -30.0, 20.0)
            self.std = torch.exp(0.5 * logvar)
            self.var = torch.exp(logvar)
        self.logvar = logvar

    @classmethod
    def from_parameters(cls, parameters: torch.Tensor, deterministic: bool = False) -> DiagonalGaussian:
        """Split ``(B, 2·D)`` or ``(B, 2·C, H, W)`` along dim 1 into mean and log-variance."""
        mean, logvar = torch.chunk(parameters, 2, dim=1)
        return cls(mean, logvar, deterministic)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.deterministic:
            return self.mean
        if hasattr(generator, "randn"):  # a noise source shared across processes (training/distributed.py)
            noise = generator.randn(self.mean.shape, self.mean.device, self.mean.dtype)
        else:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl_elementwise(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(self || other) per element, ``other`` = N(0, I) when omitted."""
        if self.deterministic:
            return torch.zeros_like(self.mean)
        if other is None:
            return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)
        return 0.5 * (
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
        )

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(self || other) summed over non-batch dims: shape ``(B,)``."""
        return sum_except_batch(self.kl_elementwise(other))

    def log_prob_elementwise(self, x: torch.Tensor) -> torch.Tensor:
        """Per-element log-density; ``x`` broadcasts against the parameters."""
        return -0.5 * (LOG_2PI + self.logvar + (x - self.mean).pow(2) / self.var)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return sum_except_batch(self.log_prob_elementwise(x))


class Bernoulli:
    """Independent Bernoulli per element, parameterised by logits (for data in [0, 1])."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def log_prob_elementwise(self, x: torch.Tensor) -> torch.Tensor:
        """x·l − softplus(l) = log σ(l)^x (1−σ(l))^(1−x); also defined for soft targets in [0, 1]."""
        return x * self.logits - F.softplus(self.logits)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return sum_except_batch(self.log_prob_elementwise(x))
