"""Distributions of the encoder (posterior q(z|x)) and the decoder (likelihood p(x|z)).

Every reduction is over all non-batch dimensions, so the same code serves vector latents ``(B, D)`` and
spatial latents ``(B, C, H, W)``. Log-densities and KL are in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def batch_noise(generator, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise for one batch, from ``generator``: None, a ``torch.Generator``, or the trainer's
    per-global-batch noise source (``training.distributed.GlobalBatchNoise``: the same draws whatever the
    number of processes)."""
    if hasattr(generator, "randn"):
        return generator.randn(shape, device, dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def batch_integers(generator, high: int, count: int, device: torch.device) -> torch.Tensor:
    """``count`` integers uniform on [0, high), one per example of the batch, from the same kinds of source."""
    if hasattr(generator, "randint"):
        return generator.randint(high, count, device)
    return torch.randint(0, high, (count,), generator=generator, device=device)


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
        return self.mean + self.std * batch_noise(generator, self.mean.shape, self.mean.device, self.mean.dtype)

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


class ContinuousBernoulli(Bernoulli):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019): a normalised density on [0, 1],
    p(x|λ) = C(λ) λ^x (1−λ)^(1−x), λ = σ(logits), C = logits / tanh(logits / 2) (2 at logits = 0).

    The Bernoulli's cross-entropy applied to values strictly between 0 and 1 is not a log-density (it
    does not integrate to 1 over [0, 1]); this is, so an ELBO with it bounds log p(x) for continuous data.
    """

    SMALL = 1e-3
    """|logits| below which the series (exact to ~1e-13 there) replaces the closed forms, whose
    cancellation near 0 would lose digits."""

    def log_normaliser(self) -> torch.Tensor:
        """log C(λ) per element."""
        l = self.logits
        safe = torch.where(l.abs() < self.SMALL, torch.ones_like(l), l)
        exact = torch.log(safe.abs()) - torch.log(torch.tanh(safe.abs() / 2))
        return torch.where(l.abs() < self.SMALL, math.log(2.0) + l.pow(2) / 12, exact)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] = 1 / (1 − e^(−l)) − 1 / l (1/2 + l/12 near 0)."""
        l = self.logits
        safe = torch.where(l.abs() < self.SMALL, torch.ones_like(l), l)
        exact = 1.0 / (-torch.expm1(-safe)) - 1.0 / safe
        return torch.where(l.abs() < self.SMALL, 0.5 + l / 12, exact)

    def log_prob_elementwise(self, x: torch.Tensor) -> torch.Tensor:
        return super().log_prob_elementwise(x) + self.log_normaliser()
