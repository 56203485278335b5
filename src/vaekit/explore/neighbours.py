"""Nearest neighbours in latent space."""

from __future__ import annotations

import numpy as np
import torch


def nearest_neighbours(means: torch.Tensor, queries: list[int], k: int) -> np.ndarray:
    """Indices ``(len(queries), k)`` of the k nearest examples to each query by Euclidean distance
    between posterior means, the query itself excluded, nearest first."""
    from sklearn.neighbors import NearestNeighbors

    data = means.numpy().astype(np.float64)
    index = NearestNeighbors(n_neighbors=min(k + 1, len(data))).fit(data)
    _, found = index.kneighbors(data[queries])
    return np.stack([[i for i in row if i != q][:k] for q, row in zip(queries, found)])
