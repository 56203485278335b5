"""Attribute arithmetic: move codes along the vector between two class centroids."""

from __future__ import annotations

import torch
from torch import nn

from vaekit.explore.latents import class_centroids


def attribute_vector(means: torch.Tensor, labels: torch.Tensor, source: int, target: int, num_classes: int) -> torch.Tensor:
    """centroid(target) − centroid(source), ``(d,)``."""
    centroids = class_centroids(means, labels, num_classes)
    return centroids[target] - centroids[source]


@torch.no_grad()
def apply_attribute(model: nn.Module, codes: torch.Tensor, vector: torch.Tensor, source: int, target: int) -> torch.Tensor:
    """Decode ``codes + vector`` ``(B, d)``. A conditional VAE keeps class out of its code, so for it the
    attribute is the label: the same codes decoded with the target label (the vector is not used)."""
    if model.conditional:
        return model.decode(codes, torch.full((len(codes),), target))
    return model.decode(codes + vector, model.labels_for(None))
