"""Datasets of images with labels and a declared value range: the contract every data source keeps.

Items are ``(image (C, H, W) float32 in value_range, label int64)``; the label is -1 when the data
has none. ``__getitems__`` returns a whole batch ``(B, C, H, W), (B,)``, so a DataLoader over a dataset
does one call per batch (use ``collate_batch`` as its ``collate_fn``). Random augmentation, where a
source has any, is drawn from ``(seed, epoch, index)``: ``set_epoch`` says which epoch is being read.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

UNLABELLED = -1


class Labelled:
    """Labels by name: ``class_names`` (empty for an unlabelled source) says whether there are labels."""

    class_names: list[str]

    @property
    def has_labels(self) -> bool:
        return bool(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class ImageData(Labelled, Dataset):
    """What every data source provides; subclasses implement ``image_shape``, ``__len__`` and
    ``_gather`` (a batch of indices -> uint8 or float32 images)."""

    def __init__(self, labels: torch.Tensor | np.ndarray | None, num_examples: int,
                 class_names: Sequence[str] | None = None, value_range: tuple[float, float] = (0.0, 1.0),
                 name: str = "", skipped: Sequence[tuple[str, str]] = ()):
        if labels is None:
            self.labels = torch.full((num_examples,), UNLABELLED, dtype=torch.int64)
        else:
            self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.class_names = list(class_names) if class_names is not None else []
        self.value_range = value_range
        self.name = name
        self.skipped = list(skipped)
        """(source, reason) for every file or row that could not be read (so far, for lazy sources)."""
        self.epoch = 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation ``__getitems__`` draws (a no-op for sources without any)."""
        self.epoch = epoch

    def _gather(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Images of ``indices`` (uint8, or float32 in the value range) and the indices whose labels go
        with them."""
        raise NotImplementedError

    @staticmethod
    def _to_float(images: torch.Tensor) -> torch.Tensor:
        return images.div(255.0) if images.dtype == torch.uint8 else images  # one pass: uint8 in, float32 out

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, label_indices = self._gather(list(indices))
        return self._to_float(images), self.labels[torch.as_tensor(label_indices, dtype=torch.int64)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

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


class ImageDataset(ImageData):
    """Images ``(N, C, H, W)`` held in memory, float32 in ``value_range`` or uint8 (mapped to [0, 1]):
    the built-in small datasets and fixed held-out sets. Nothing random: the epoch is ignored."""

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
        super().__init__(labels, len(images), class_names, value_range, name, skipped)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def _gather(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        return self.images[torch.as_tensor(indices, dtype=torch.int64)], indices


def collate_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``collate_fn`` for datasets whose ``__getitems__`` already returns a stacked batch."""
    return batch


def batch_loader(dataset: Dataset, **kwargs: Any) -> DataLoader:
    """A DataLoader that uses the dataset's batch gather (``__getitems__``) when it has one."""
    if hasattr(dataset, "__getitems__"):
        kwargs.setdefault("collate_fn", collate_batch)
    return DataLoader(dataset, **kwargs)


def batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 batch; in a loader worker, in shared memory (as torch's own collate does),
    so handing the batch to the main process copies nothing."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    prototype = torch.empty(0, dtype=torch.float32)
    return prototype.new(prototype._typed_storage()._new_shared(math.prod(shape))).resize_(shape)
