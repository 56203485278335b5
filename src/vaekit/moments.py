"""Mean and variance accumulated over batches, in float64: the one implementation behind the latent
scale (``measure_latent_scale``), the latent statistics of ``vaekit eval`` and the image-wide GroupNorm
statistics of tiling."""

from __future__ import annotations

import torch


class Moments:
    """Running sums over the last axis of every tensor added: ``add(x)`` with ``x`` of shape
    ``(..., n)`` accumulates n values for each index of ``...`` (which must be the same every time)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        total, squares = x.sum(-1), x.pow(2).sum(-1)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += x.shape[-1]

    def mean(self) -> torch.Tensor:
        return self.total / self.count

    def variance(self, correction: int = 0) -> torch.Tensor:
        """Biased (``correction=0``) or unbiased (``correction=1``) variance; never negative."""
        mean = self.mean()
        return ((self.squares - self.total * mean) / (self.count - correction)).clamp_min(0)
