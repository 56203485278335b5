"""Data sources, registered by name in ``vaekit.registry.DATASETS``."""

from __future__ import annotations

from vaekit.config import ComponentConfig
from vaekit.data import digits, folder, hf, objects, photos, shapes  # noqa: F401  (registers the datasets)
from vaekit.data.base import ImageData, ImageDataset, batch_loader, collate_batch
from vaekit.data.loading import TrainingBatches
from vaekit.registry import DATASETS


def build_dataset(config: ComponentConfig, split: str):
    """The ``split`` ("train" or "test") of the dataset named in ``config``: an ``ImageData`` (a
    ``StreamingImages`` for the training split of a streamed Hugging Face dataset)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return DATASETS.get(config.name).obj(config.params, split)


__all__ = ["ImageData", "ImageDataset", "TrainingBatches", "batch_loader", "build_dataset", "collate_batch"]
