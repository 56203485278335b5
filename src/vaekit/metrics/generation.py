"""Scores of generated images in a fixed feature space, and rank statistics of scores across models.

- ``precision_recall``: improved precision and recall (Kynkäänniemi et al. 2019). Each set's manifold is
  the union of balls around its points with the radius of each point's k-th nearest neighbour in the
  same set; precision is the share of generated points inside the real manifold (fidelity), recall the
  share of real points inside the generated one (coverage).
- ``spearman`` and ``bootstrap_interval``: how well a cheap signal ranks models as the arbiter does.
"""

from __future__ import annotations

import numpy as np
import torch


def _kth_neighbour_radius(points: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    radii = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start:start + chunk], points)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the first is the point itself, at distance 0
    return torch.cat(radii)


def _inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Whether each query lies within the radius of at least one centre."""
    inside = []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start:start + chunk], centres)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: torch.Tensor, generated: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall of ``generated`` features ``(M, d)`` against ``real`` ``(N, d)``
    (Kynkäänniemi et al. 2019, k = 3 as there), in float64."""
    if len(real) <= k or len(generated) <= k:
        raise ValueError(f"precision and recall with k={k} need more than {k} points in each set")
    real, generated = real.double(), generated.double()
    precision = _inside(generated, real, _kth_neighbour_radius(real, k)).double().mean().item()
    recall = _inside(real, generated, _kth_neighbour_radius(generated, k)).double().mean().item()
    return {"precision": precision, "recall": recall}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equally long sequences (NaN when either is constant)."""
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def bootstrap_interval(a, b, statistic=spearman, resamples: int = 2000, level: float = 0.9,
                       seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of ``statistic(a, b)``, resampling the pairs with replacement
    (resamples where the statistic is undefined, e.g. every pair the same, are left out)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, len(a), len(a))
        value = statistic(a[rows], b[rows])
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))
