"""The GroupNorm every vaekit convolutional model uses: ``nn.GroupNorm`` (same parameters, same results),
which a tiled pass (``models.tiling``) can hand image-wide statistics instead of the tile's own."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

SHARED_NORM: ContextVar[Any] = ContextVar("vaekit_shared_group_norm", default=None)
"""Set by a tiled pass for its duration (an object whose ``forward(module, x)`` normalises ``x``): so it is
re-entrant, confined to its own thread, and reaches compiled modules too (their GroupNorms run eagerly
while it is set)."""


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm``, unless a tiled pass is under way (``SHARED_NORM``): then its statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = SHARED_NORM.get()
        return super().forward(x) if shared is None else shared.forward(self, x)
