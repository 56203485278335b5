"""Interpolation in latent space: linear and spherical paths, strips between examples, latent walks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn



def lerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` points from z0 to z1 inclusive: ``(steps, *z0.shape)``."""
    t = torch.linspace(0, 1, steps, dtype=z0.dtype).view(-1, *[1] * z0.ndim)
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """Spherical interpolation (Shoemake; White 2016 for VAEs): follows the shell where most of a
    Gaussian prior's mass lies instead of cutting through its low-norm centre. Falls back to ``lerp``
    for (anti)parallel endpoints."""
    cos = torch.dot(z0.flatten(), z1.flatten()) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    if torch.sin(omega).abs() < 1e-6:
        return lerp(z0, z1, steps)
    t = torch.linspace(0, 1, steps, dtype=z0.dtype).view(-1, *[1] * z0.ndim)
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


PATHS = {"linear": lerp, "slerp": slerp}


def pick_pairs(labels: torch.Tensor, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` index pairs of examples with different labels (any two examples when unlabelled);
    none when there are fewer than two examples."""
    if len(labels) < 2:
        return []
    rng = np.random.default_rng(seed)
    labels = labels.numpy()
    pairs: list[tuple[int, int]] = []
    labelled = (labels >= 0).all() and len(set(labels.tolist())) > 1
    while len(pairs) < count:
        i, j = (int(v) for v in rng.choice(len(labels), 2, replace=False))
        if not labelled or labels[i] != labels[j]:
            pairs.append((i, j))
    return pairs


def _path_labels(label0: torch.Tensor | None, label1: torch.Tensor | None, steps: int) -> torch.Tensor | None:
    """A conditional model is decoded with the start's label for the first half and the end's after."""
    if label0 is None:
        return None
    return torch.where(torch.arange(steps) < steps / 2, label0, label1)


@torch.no_grad()
def interpolate(model: nn.Module, z0: torch.Tensor, z1: torch.Tensor, steps: int, method: str = "linear",
                labels0: torch.Tensor | None = None, labels1: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded paths between code pairs: z0, z1 ``(P, d)`` -> images ``(P, steps, C, H, W)``.

    The first and last images are the decodings of z0 and z1 themselves (for posterior means, the
    reconstructions of the two inputs).
    """
    path = PATHS[method]
    strips = []
    for p in range(len(z0)):
        codes = path(z0[p], z1[p], steps)
        labels = _path_labels(None if labels0 is None else labels0[p], None if labels1 is None else labels1[p], steps)
        strips.append(model.decode(codes, model.labels_for(labels)))
    return torch.stack(strips)


def smoothness(strips: torch.Tensor) -> float:
    """How evenly decoded images change along interpolation paths: mean over paths of
    (mean step size / largest step size), steps measured as L2 distances between consecutive images.
    1 = every step changes the image equally; near 1/(steps-1) = everything happens in one jump."""
    steps = (strips[:, 1:] - strips[:, :-1]).flatten(2).norm(dim=2)
    ratio = steps.mean(1) / steps.max(1).values.clamp_min(1e-12)
    return float(ratio.mean())


@torch.no_grad()
def latent_walk(model: nn.Module, centroids: torch.Tensor, frames_per_leg: int, method: str = "slerp") -> torch.Tensor:
    """A closed loop through ``centroids`` ``(K, d)`` in order and back to the first:
    frames ``(K · frames_per_leg, C, H, W)``, each leg without its end point (the next leg starts there)."""
    path = PATHS[method]
    frames = []
    for k in range(len(centroids)):
        nxt = (k + 1) % len(centroids)
        codes = path(centroids[k], centroids[nxt], frames_per_leg + 1)[:-1]
        labels = _path_labels(torch.tensor(k), torch.tensor(nxt), frames_per_leg + 1)
        frames.append(model.decode(codes, model.labels_for(None if labels is None else labels[:-1])))
    return torch.cat(frames)
