"""Value ranges are declared by datasets and models, never guessed; this maps one onto the other."""

from __future__ import annotations

from typing import Callable

import torch


def range_map(source: tuple[float, float], target: tuple[float, float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The affine map from the data's declared value range to the model's (identity when equal)."""
    if tuple(source) == tuple(target):
        return lambda x: x
    scale = (target[1] - target[0]) / (source[1] - source[0])
    return lambda x: (x - source[0]) * scale + target[0]
