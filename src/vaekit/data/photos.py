"""``photos``: the photographs that ship inside scikit-image and scikit-learn, as crops for image
autoencoders, for a first run with no download.

Training crops (random position, random horizontal flip, drawn once from the seed) come from
scikit-image's colour photographs; the held-out split is the grid of non-overlapping crops of
scikit-learn's two sample photographs (china, flower), images the model never sees in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from vaekit.data.base import ImageDataset
from vaekit.registry import DATASETS

TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


@dataclass
class PhotosConfig:
    crop_size: int = 64
    num_train: int = 4000
    """Training crops drawn (with flips) from the training photographs."""
    small_images: Literal["upscale", "skip"] = "upscale"
    """What to do with a photograph smaller than the crop."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crop_size < 8 or self.num_train < 1:
            raise ValueError("crop_size must be at least 8 and num_train at least 1")


def fit_to_crop(images: list[np.ndarray], crop: int, policy: str) -> tuple[list[np.ndarray], int]:
    """Images at least ``crop`` on each side: smaller ones upscaled (aspect kept) or skipped; returns
    the kept images and how many were changed or dropped."""
    kept, affected = [], 0
    for image in images:
        height, width = image.shape[:2]
        if min(height, width) >= crop:
            kept.append(image)
            continue
        affected += 1
        if policy == "upscale":
            scale = crop / min(height, width)
            size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
            kept.append(np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC)))
    return kept, affected


def random_crops(images: list[np.ndarray], crop: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``(count, 3, crop, crop)`` uint8: a random image, position and horizontal flip for each."""
    out = np.empty((count, 3, crop, crop), dtype=np.uint8)
    for i in range(count):
        image = images[rng.integers(len(images))]
        top, left = rng.integers(0, image.shape[0] - crop + 1), rng.integers(0, image.shape[1] - crop + 1)
        patch = image[top:top + crop, left:left + crop]
        out[i] = (patch[:, ::-1] if rng.random() < 0.5 else patch).transpose(2, 0, 1)
    return out


def grid_crops(images: list[np.ndarray], crop: int) -> np.ndarray:
    """Every non-overlapping ``crop × crop`` tile of each image, centred: ``(N, 3, crop, crop)`` uint8."""
    tiles = []
    for image in images:
        rows, cols = image.shape[0] // crop, image.shape[1] // crop
        top, left = (image.shape[0] - rows * crop) // 2, (image.shape[1] - cols * crop) // 2
        for r in range(rows):
            for c in range(cols):
                y, x = top + r * crop, left + c * crop
                tiles.append(image[y:y + crop, x:x + crop].transpose(2, 0, 1))
    return np.stack(tiles)


@DATASETS.register("photos", PhotosConfig)
def photos(config: PhotosConfig, split: str) -> ImageDataset:
    if split == "train":
        from skimage import data

        images = [getattr(data, name)() for name in TRAIN_PHOTOS]
        images, affected = fit_to_crop(images, config.crop_size, config.small_images)
        crops = random_crops(images, config.crop_size, config.num_train, np.random.default_rng(config.seed))
    else:
        from sklearn.datasets import load_sample_images

        images, affected = fit_to_crop(list(load_sample_images().images), config.crop_size, config.small_images)
        crops = grid_crops(images, config.crop_size)
    skipped = [(f"photo {i}", f"smaller than the {config.crop_size}-pixel crop: {config.small_images}d")
               for i in range(affected)] if affected and config.small_images == "skip" else []
    return ImageDataset(crops, name=f"photos/{split}", skipped=skipped)
