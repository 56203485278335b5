"""Per-dimension latent traversals."""

from __future__ import annotations

import torch
from torch import nn



@torch.no_grad()
def traverse(model: nn.Module, base: torch.Tensor, dims: list[int], steps: int = 9, extent: float = 3.0,
             label: torch.Tensor | None = None) -> torch.Tensor:
    """For each dimension in ``dims`` decode ``base`` ``(d,)`` with that coordinate set to each of
    ``steps`` values evenly spaced over [-extent, extent]: images ``(len(dims), steps, C, H, W)``."""
    values = torch.linspace(-extent, extent, steps, dtype=base.dtype)
    rows = []
    for dim in dims:
        codes = base.repeat(steps, 1)
        codes[:, dim] = values
        labels = None if label is None else label.repeat(steps)
        rows.append(model.decode(codes, model.labels_for(labels)))
    return torch.stack(rows)
