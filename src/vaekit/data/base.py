"""In-memory image datasets for the small models: ``(x, label)`` pairs with a declared value range."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

UNLABELLED = -1


class ImageDataset(Dataset):
    """Images ``(N, C, H, W)`` held in memory, float32 in ``value_range`` or uint8 (mapped to [0, 1]).

    Items are ``(image (C, H, W) float32, label int64)``; the label is -1 when the data has none.
    ``__getitems__`` gathers a whole batch with one indexing operation, so a DataLoader over this
    dataset does one tensor gather per batch instead of a Python call and a stack per example
    (use ``collate_batch`` as its ``collate_fn``).
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        name: str = "",
        skipped: Sequence[tuple[str, str]] = (),
    ):
        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            images = images.float()
        self.images = images
        if labels is None:
            self.labels = torch.full((len(images),), UNLABELLED, dtype=torch.int64)
        else:
            self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.class_names = list(class_names) if class_names is not None else []
        self.value_range = value_range
        self.name = name
        self.skipped = list(skipped)
        """(file, reason) for every source file that could not be read."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def has_labels(self) -> bool:
        return bool(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def _to_float(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0) if images.dtype == torch.uint8 else images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._to_float(self.images[index]), self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self._to_float(self.images[index]), self.labels[index]

    def spread_indices(self, count: int, seed: int = 0) -> list[int]:
        """``count`` example indices, taking the classes in turn (a seeded random pick within each),
        so a small figure shows every class; plain seeded random indices when unlabelled."""
        rng = np.random.default_rng(seed)
        count = min(count, len(self))
        if not self.has_labels:
            return sorted(rng.choice(len(self), count, replace=False).tolist())
        labels = self.labels.numpy()
        pools = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in range(self.num_classes)]
        picked: list[int] = []
        while len(picked) < count:
            for pool in pools:
                if pool and len(picked) < count:
                    picked.append(pool.pop(0))
        return picked


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``collate_fn`` for datasets whose ``__getitems__`` already returns a stacked batch."""
    return batch


def batch_loader(dataset: Dataset, **kwargs: Any) -> DataLoader:
    """A DataLoader that uses the dataset's batch gather (``__getitems__``) when it has one."""
    if hasattr(dataset, "__getitems__"):
        kwargs.setdefault("collate_fn", collate_batch)
    return DataLoader(dataset, **kwargs)
