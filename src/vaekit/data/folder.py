"""Any folder of images (recursive), read lazily: ``folder`` for the small models (centre crop and resize,
grayscale or RGB, labels from sub-folders) and ``folder-crops`` for image autoencoders (random crops of
your photographs, new ones every epoch).

Files that cannot be decoded (corrupt, truncated, not an image) are skipped when they are met, named
in a warning, and replaced by the next readable file; they never stop a run. Odd modes (16-bit,
palette, alpha, CMYK) are converted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vaekit.data.lazy import FileSource, LazyImages, list_image_folder
from vaekit.data.transforms import CropSpec
from vaekit.registry import DATASETS


def split_items(count: int, test_fraction: float, seed: int, split: str) -> np.ndarray:
    """The sorted indices of ``split``: a seeded ``test_fraction`` of ``count`` items is held out."""
    order = np.random.default_rng(seed).permutation(count)
    num_test = max(1, round(count * test_fraction))
    return np.sort(order[:num_test] if split == "test" else order[num_test:])


def check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")


@dataclass
class FolderConfig:
    path: str = ""
    image_size: int = 28
    """Images are resized to image_size × image_size."""
    grayscale: bool = True
    """Convert images to one channel."""
    test_fraction: float = 0.1
    """Share of the examples held out as the test split (a seeded choice)."""
    seed: int = 0
    """Seeds the train/test split of the sorted file list."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is required: the folder of images to train on")
        if self.image_size < 2:
            raise ValueError(f"image_size must be at least 2, got {self.image_size}")
        check_fraction(self.test_fraction)


def folder_labels(files: list[str]) -> tuple[np.ndarray | None, list[str] | None]:
    """Labels from the first sub-folder when every file is in one; else none."""
    parts = [Path(f).parts for f in files]
    if not all(len(p) >= 2 for p in parts):
        return None, None
    class_names = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[p[0]] for p in parts]), class_names


@DATASETS.register("folder", FolderConfig)
def folder(config: FolderConfig, split: str) -> LazyImages:
    """Any folder of images (recursive), centre-cropped and resized; labels from sub-folders."""
    root, files = list_image_folder(config.path)
    labels, class_names = folder_labels(files)
    items = split_items(len(files), config.test_fraction, config.seed, split)
    spec = CropSpec(config.image_size, short_side=config.image_size, grayscale=config.grayscale)
    return LazyImages(FileSource(root, files), items, spec, config.seed,
                      None if labels is None else labels[items], class_names, name=f"folder:{config.path}/{split}")


@dataclass
class FolderCropsConfig:
    """A folder of photographs (recursive) for image autoencoders: one random crop (with a random flip)
    of every training file per epoch, new crops each epoch; the centre crop of each held-out file."""

    path: str = ""
    crop_size: int = 64
    """Side of the square crops, in pixels."""
    short_side: int | None = None
    """Resize every image so its short side is this before cropping (JPEGs are decoded at a reduced
    scale when they are much larger). Default null: crops at the files' own scale, so crop_size=256 of a
    4K photograph is 256 pixels of the photograph, not of a thumbnail; images whose short side is below
    crop_size are upscaled to it (small_images)."""
    flip: bool = True
    """Mirror each crop left-right at random (on by default: a photograph and its mirror image are equally likely)."""
    small_images: Literal["upscale", "skip"] = "upscale"
    """Images smaller than the crop: upscale them to fit, or skip them (named in the run's metrics)."""
    test_fraction: float = 0.1
    """Share of the examples held out as the test split (a seeded choice)."""
    seed: int = 0
    """Seeds which examples are held out (and any augmentation)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is required: the folder of photographs")
        if self.crop_size < 8:
            raise ValueError(f"crop_size must be at least 8, got {self.crop_size}")
        if self.short_side is not None and self.short_side < self.crop_size:
            raise ValueError(f"short_side ({self.short_side}) must be at least crop_size ({self.crop_size})")
        check_fraction(self.test_fraction)


@DATASETS.register("folder-crops", FolderCropsConfig)
def folder_crops(config: FolderCropsConfig, split: str) -> LazyImages:
    """A folder of photographs (recursive), random crops with flips for image autoencoders."""
    root, files = list_image_folder(config.path)
    items = split_items(len(files), config.test_fraction, config.seed, split)
    training = split == "train"
    spec = CropSpec(config.crop_size, config.short_side, random=training, flip=training and config.flip,
                    small_images=config.small_images)
    return LazyImages(FileSource(root, files), items, spec, config.seed, name=f"folder-crops:{config.path}/{split}")
