"""Built-in 16×16 geometric patterns: diagonal, horizontal, vertical and cross, anti-aliased.

Each image is one line (or two for a cross) with a continuous random position and thickness, so no two
images are alike and a model has to learn the factors (kind, position, thickness) rather than memorise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaekit.data.base import ImageDataset
from vaekit.registry import DATASETS

CLASS_NAMES = ("diagonal", "horizontal", "vertical", "cross")


@dataclass
class ShapesConfig:
    num_train: int = 8000
    """Training examples generated (or crops drawn per epoch)."""
    num_test: int = 2000
    """Test examples generated."""
    image_size: int = 16
    """Images are resized to image_size × image_size."""
    seed: int = 0
    """Seeds the generator; train and test come from separate streams, so the split is fixed."""

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError("num_train and num_test must be at least 1")
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {self.image_size}")


def _line(distance: np.ndarray, thickness: np.ndarray) -> np.ndarray:
    """Pixel coverage of a line of the given thickness at signed ``distance`` from its centre."""
    return np.clip(thickness / 2 + 0.5 - np.abs(distance), 0.0, 1.0)


def make_shapes(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images ``(n, 1, size, size)`` float32 in [0, 1] and their labels (index into CLASS_NAMES)."""
    labels = rng.integers(0, len(CLASS_NAMES), n)
    thickness = rng.uniform(1.0, 3.0, n)[:, None, None]
    row = rng.uniform(2.0, size - 2.0, n)[:, None, None]
    col = rng.uniform(2.0, size - 2.0, n)[:, None, None]
    slope = rng.choice([-1.0, 1.0], n)[:, None, None]
    offset = rng.uniform(-size / 4, size / 4, n)[:, None, None]
    y, x = np.mgrid[0:size, 0:size] + 0.5
    centre = size / 2
    horizontal = _line(y - row, thickness)
    vertical = _line(x - col, thickness)
    # Distance to the line y - c = slope·(x - c) + offset, measured perpendicular to it.
    diagonal = _line((y - centre - slope * (x - centre) - offset) / np.sqrt(2.0), thickness)
    images = np.select(
        [labels[:, None, None] == k for k in range(4)],
        [diagonal, horizontal, vertical, np.maximum(horizontal, vertical)],
    )
    return images[:, None].astype(np.float32), labels


@DATASETS.register("shapes", ShapesConfig)
def shapes(config: ShapesConfig, split: str) -> ImageDataset:
    """16×16 anti-aliased lines of four labelled kinds (diagonal, horizontal, vertical, cross)."""
    n = config.num_train if split == "train" else config.num_test
    rng = np.random.default_rng([config.seed, 0 if split == "train" else 1])
    images, labels = make_shapes(n, config.image_size, rng)
    return ImageDataset(images, labels, CLASS_NAMES, name=f"shapes/{split}")
