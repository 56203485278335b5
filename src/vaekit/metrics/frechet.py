"""Distances between two sets of features in a fixed feature space (Inception's, DINOv2's, a classifier's):

- ``frechet_distance``: FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½), FID's formula on any network's features.
- ``kernel_distance``: KID (Bińkowski et al. 2018), the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y / d + 1)³, over the whole sets (no subsets): unlike FD it has no bias at a few hundred
  samples, so a small set scores about the same as a large one.
"""

from __future__ import annotations

import numpy as np
import torch


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


def kernel_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, degree: int = 3) -> float:
    """Unbiased MMD² between feature rows ``a`` ``(N, d)`` and ``b`` ``(M, d)`` with the polynomial kernel
    (x·y / d + 1)^degree, in float64: the mean kernel within each set over distinct pairs, minus twice the
    mean across the sets."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the kernel distance needs at least two rows in each set")
    d = a.shape[1]
    k_aa, k_bb, k_ab = ((x @ y.T / d + 1) ** degree for x, y in ((a, a), (b, b), (a, b)))
    n, m = len(a), len(b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within_a + within_b - 2 * k_ab.mean())
