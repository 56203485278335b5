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


def check_cache(cache_mb: int) -> None:
    if cache_mb < 0:
        raise ValueError(f"cache_mb must be at least 0, got {cache_mb}")


def file_source(root: Path, files: list[str], cache: bool, cache_mb: int) -> FileSource:
    return FileSource(root, files, cache_bytes=cache_mb << 20 if cache else 0)




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
    cache: bool = True
    """Keep each decoded (and resized) image in memory after its first read, while they fit in cache_mb;
    each loader worker (train.num_workers) keeps its own."""
    cache_mb: int = 2048
    """The memory budget of data.cache, in MiB."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is required: the folder of images to train on")
        if self.image_size < 2:
            raise ValueError(f"image_size must be at least 2, got {self.image_size}")
        check_fraction(self.test_fraction)
        check_cache(self.cache_mb)


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
    return LazyImages(file_source(root, files, config.cache, config.cache_mb), items, spec, config.seed,
                      None if labels is None else labels[items], class_names, name=f"folder:{config.path}/{split}")


def whole_folder(path: str | Path, size: int, cache: bool = False) -> LazyImages:
    """Every image of a folder (recursive) as a diffusion model sees it: the short side resized to ``size``,
    then the centre ``size``² crop, in colour; labels from sub-folders. For scoring a model on a folder."""
    root, files = list_image_folder(path)
    labels, class_names = folder_labels(files)
    spec = CropSpec(size, short_side=size)
    return LazyImages(file_source(root, files, cache, 2048), np.arange(len(files)), spec, 0, labels, class_names,
                      name=f"folder:{path}")


@dataclass
class FolderCropsConfig:
    """A folder of photographs (recursive) for image autoencoders: crops_per_image random crops (with a
    random flip) of every training file per epoch, new crops each epoch; the centre crop of each held-out
    file (a seeded test_fraction of the folder, or every file of test_path)."""

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
    crops_per_image: int = 1
    """Random crops of each training image per epoch (a small folder of large photographs wants several)."""
    test_fraction: float = 0.1
    """Share of the examples held out as the test split (a seeded choice); unused with test_path."""
    test_path: str | None = None
    """A separate folder of photographs to validate and evaluate on (e.g. another collection, to measure
    how the autoencoder does on images unlike its training set); then every file of path trains."""
    seed: int = 0
    """Seeds which examples are held out (and any augmentation)."""
    cache: bool = True
    """Keep each decoded (and resized) photograph in memory after its first read, while they fit in
    cache_mb, so later crops of it cost no decoding; each loader worker (train.num_workers) keeps its own."""
    cache_mb: int = 2048
    """The memory budget of data.cache, in MiB (a 1024×683 RGB photograph takes 2 MiB)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is required: the folder of photographs")
        if self.crops_per_image < 1:
            raise ValueError(f"crops_per_image must be at least 1, got {self.crops_per_image}")
        check_cache(self.cache_mb)
        if self.crop_size < 8:
            raise ValueError(f"crop_size must be at least 8, got {self.crop_size}")
        if self.short_side is not None and self.short_side < self.crop_size:
            raise ValueError(f"short_side ({self.short_side}) must be at least crop_size ({self.crop_size})")
        check_fraction(self.test_fraction)


@DATASETS.register("folder-crops", FolderCropsConfig)
def folder_crops(config: FolderCropsConfig, split: str) -> LazyImages:
    """A folder of photographs (recursive), random crops with flips for image autoencoders."""
    training = split == "train"
    path = config.test_path if config.test_path and not training else config.path
    root, files = list_image_folder(path)
    if config.test_path:
        items = np.arange(len(files))
    else:
        items = split_items(len(files), config.test_fraction, config.seed, split)
    if training:
        items = np.repeat(items, config.crops_per_image)
    spec = CropSpec(config.crop_size, config.short_side, random=training, flip=training and config.flip,
                    small_images=config.small_images)
    return LazyImages(file_source(root, files, config.cache, config.cache_mb), items, spec, config.seed,
                      name=f"folder-crops:{path}/{split}")
