"""Fréchet distance between two sets of features, and a small classifier whose features it can use when
the Inception network's weights are not on the machine (labelled data only): FD = ‖μ₁ − μ₂‖² +
Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½), FID's formula on another network's features."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def frechet_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """FD between the Gaussians fitted to feature rows ``a`` ``(N, d)`` and ``b`` ``(M, d)``, in float64."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # near-singular product: regularise as FID implementations do
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


class FeatureClassifier(nn.Module):
    """Three strided conv layers and a linear head; ``features`` is the 64-d input of the head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 1000,
                     seed: int = 0, batch_size: int = 64) -> tuple[FeatureClassifier, float]:
    """A ``FeatureClassifier`` trained on ``images`` (in [-1, 1]) and ``labels``; returns it (eval mode) and
    its accuracy on the training images. 1,000 steps: on the meta-study's 1,600 ``objects`` images at 32²,
    300 steps left it at 0.156 training accuracy (chance 0.10); 1,000 reach 0.915, and 0.270 held out
    (docs/diffusion.md)."""
    torch.manual_seed(seed)
    model = FeatureClassifier(images.shape[1], num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, len(images), (batch_size,), generator=generator)
        loss = nn.functional.cross_entropy(model(images[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, classifier_accuracy(model, images, labels)


@torch.no_grad()
def classifier_accuracy(model: FeatureClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    predicted = torch.cat([model(images[i:i + 256]).argmax(1) for i in range(0, len(images), 256)])
    return (predicted == labels).float().mean().item()


@torch.no_grad()
def features_of(model: FeatureClassifier, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.features(images[i:i + 256]) for i in range(0, len(images), 256)])
