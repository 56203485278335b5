"""scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes; no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaekit.data.base import ImageDataset
from vaekit.registry import DATASETS

TEST_SIZE = 297  # fixed stratified split: 1,500 train / 297 test


@dataclass
class DigitsConfig:
    """The split is fixed (stratified, random_state 0), so results compare across runs."""


@DATASETS.register("digits", DigitsConfig)
def digits(config: DigitsConfig, split: str) -> ImageDataset:
    """scikit-learn's 1,797 bundled 8×8 handwritten digits, 10 labels, a fixed split 1,500 / 297."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    train_idx, test_idx = train_test_split(
        np.arange(len(bunch.target)), test_size=TEST_SIZE, stratify=bunch.target, random_state=0
    )
    index = train_idx if split == "train" else test_idx
    images = (bunch.images[index] / 16.0).astype(np.float32)[:, None]  # pixel values are 0..16
    return ImageDataset(images, bunch.target[index], [str(d) for d in range(10)], name=f"digits/{split}")
