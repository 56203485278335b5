"""Encoding a dataset into its latent statistics, and 2-D maps of the latent space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vaekit.data.base import ImageDataset, batch_loader


@dataclass
class LatentStats:
    """Posterior statistics of a dataset: means ``(N, d)``, labels ``(N,)`` (-1 = unlabelled), the mean
    KL per dimension and the activity Var_x(E[z_u|x]) per dimension (``(d,)`` each)."""

    means: torch.Tensor
    labels: torch.Tensor
    kl_per_dim: torch.Tensor
    activity: torch.Tensor

    def order_by_kl(self) -> list[int]:
        return torch.argsort(self.kl_per_dim, descending=True).tolist()


@torch.no_grad()
def encode_dataset(model: nn.Module, dataset: ImageDataset, batch_size: int = 256,
                   device: str | torch.device = "cpu", to_model_range=lambda x: x) -> LatentStats:
    """One pass over ``dataset``; keeps only the means (flattened: spatial latents become vectors), never
    the images. ``to_model_range`` maps the data's value range onto the model's."""
    means, labels = [], []
    kl_sum = 0.0
    for x, y in batch_loader(dataset, batch_size=batch_size):
        posterior = model.encode(to_model_range(x.to(device)), model.labels_for(y.to(device)))
        means.append(posterior.mean.flatten(1).cpu())
        labels.append(y)
        kl_sum = kl_sum + posterior.kl_elementwise().flatten(1).sum(0).double().cpu()
    means_all = torch.cat(means)
    return LatentStats(means_all, torch.cat(labels), (kl_sum / len(means_all)).float(),
                       means_all.double().var(0, unbiased=False).float())


def latent_map(means: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """``(N, d)`` -> ``(N, 2)``: "latent" (the code itself, d = 2), "pca", "tsne" or "umap"."""
    means = np.asarray(means, dtype=np.float64)
    if method == "latent":
        if means.shape[1] != 2:
            raise ValueError(f"the latent itself is a map only when it is 2-D, not {means.shape[1]}-D")
        return means.copy()
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(means)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(means) - 1) / 3)))
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(means)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(means)
    raise ValueError(f"unknown latent map method {method!r}")


def class_centroids(means: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(num_classes, d)``: the mean code of each class (classes with no example are NaN)."""
    return torch.stack([means[labels == c].mean(0) for c in range(num_classes)])
