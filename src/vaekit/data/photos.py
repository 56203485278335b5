"""``photos``: the photographs that ship inside scikit-image and scikit-learn, as crops for image
autoencoders, for a first run with no download.

Training crops (random position, random horizontal flip, drawn once from the seed) come from
scikit-image's colour photographs; the held-out split is the grid of non-overlapping crops of
scikit-learn's two sample photographs (china, flower), images the model never sees in training.
"""

from __future__ import annotations

import functools
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


@dataclass
class FolderCropsConfig:
    """A folder of photographs (recursive) for image autoencoders: random crops with flips from the
    training files, the centre crop of each held-out file for evaluation."""

    path: str = ""
    crop_size: int = 64
    num_train: int = 4000
    short_side: int | None = 256
    """Resize every image so its short side is this (bounds memory); null keeps the files' size."""
    small_images: Literal["upscale", "skip"] = "upscale"
    test_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is required: the folder of photographs")
        if self.short_side is not None and self.short_side < self.crop_size:
            raise ValueError(f"short_side ({self.short_side}) must be at least crop_size ({self.crop_size})")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")


@functools.lru_cache(maxsize=2)
def _read_photos(root: str, short_side: int | None) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """Every readable photograph below ``root`` as ``(H, W, 3)`` uint8 (short side resized to
    ``short_side``), read once for both splits; unreadable files skipped."""
    from vaekit.data.folder import read_folder, to_mode

    def load(path) -> np.ndarray:
        with Image.open(path) as image:
            image.load()
            image = to_mode(image, grayscale=False)
            if short_side is not None:
                scale = short_side / min(image.size)
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                     Image.Resampling.BICUBIC)
            return np.asarray(image, dtype=np.uint8)

    images, _, skipped = read_folder(root, load)
    return images, skipped


@DATASETS.register("folder-crops", FolderCropsConfig)
def folder_crops(config: FolderCropsConfig, split: str) -> ImageDataset:
    import logging

    images, unreadable = _read_photos(config.path, config.short_side)
    order = np.random.default_rng(config.seed).permutation(len(images))
    num_test = max(1, round(len(images) * config.test_fraction))
    chosen = [images[i] for i in sorted(order[:num_test] if split == "test" else order[num_test:])]
    chosen, affected = fit_to_crop(chosen, config.crop_size, config.small_images)
    if affected:
        logging.getLogger("vaekit").warning("%d %s image(s) smaller than the %d-pixel crop were %sd", affected, split,
                                            config.crop_size, config.small_images)
    if not chosen:
        from vaekit.errors import VaekitError

        raise VaekitError(f"no {split} image of {config.path} is as large as the {config.crop_size}-pixel crop")
    if split == "train":
        crops = random_crops(chosen, config.crop_size, config.num_train, np.random.default_rng([config.seed, 1]))
    else:
        c = config.crop_size
        crops = np.stack([img[(img.shape[0] - c) // 2:(img.shape[0] - c) // 2 + c,
                              (img.shape[1] - c) // 2:(img.shape[1] - c) // 2 + c].transpose(2, 0, 1) for img in chosen])
    skipped = unreadable + ([("(images)", f"{affected} smaller than the crop, skipped")]
                            if affected and config.small_images == "skip" else [])
    return ImageDataset(crops, name=f"folder-crops:{config.path}/{split}", skipped=skipped)
