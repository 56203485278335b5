"""``photos``: the photographs that ship inside scikit-image and scikit-learn, as crops for image
autoencoders, for a first run with no download.

Training examples are random crops with random flips of scikit-image's colour photographs, drawn per
example from (seed, epoch, index) like every other source, so each epoch sees new crops; the held-out
split is the grid of non-overlapping crops of scikit-learn's two sample photographs (china, flower),
images the model never sees in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from vaekit.data.base import ImageDataset
from vaekit.data.lazy import ArraySource, LazyImages
from vaekit.data.transforms import CropSpec, fit_picture
from vaekit.errors import VaekitError
from vaekit.registry import DATASETS

TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
HELD_OUT_PHOTOS = ("china", "flower")
"""scikit-learn's sample images, in the order ``load_sample_images`` gives them."""


@dataclass
class PhotosConfig:
    crop_size: int = 64
    """Side of the square crops, in pixels."""
    num_train: int = 4000
    """Training examples per epoch, taken from the photographs in turn (a new random crop each epoch)."""
    small_images: Literal["upscale", "skip"] = "upscale"
    """What to do with a photograph smaller than the crop."""
    seed: int = 0
    """Seeds which examples are held out (and any augmentation)."""

    def __post_init__(self) -> None:
        if self.crop_size < 8 or self.num_train < 1:
            raise ValueError("crop_size must be at least 8 and num_train at least 1")


def builtin_photographs() -> dict[str, np.ndarray]:
    """The built-in photographs at their own size, ``(H, W, 3)`` uint8 by name: scikit-image's colour
    photographs (the training photos), then scikit-learn's two (the held-out ones)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    pictures = {name: getattr(data, name)() for name in TRAIN_PHOTOS}
    pictures.update(zip(HELD_OUT_PHOTOS, load_sample_images().images))
    return pictures


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


def _fitted(pictures: list[np.ndarray], names: list[str], spec: CropSpec) -> tuple[list[np.ndarray], list[str], list]:
    kept, kept_names, skipped = [], [], []
    for picture, name in zip(pictures, names):
        try:
            kept.append(fit_picture(picture, spec))
            kept_names.append(name)
        except ValueError as err:
            skipped.append((name, str(err)))
    if not kept:
        raise VaekitError(f"no built-in photograph is as large as the {spec.size}-pixel crop")
    return kept, kept_names, skipped


@DATASETS.register("photos", PhotosConfig)
def photos(config: PhotosConfig, split: str) -> ImageDataset | LazyImages:
    """Random crops of scikit-image's colour photographs; held out: grid crops of scikit-learn's two."""
    photographs = builtin_photographs()
    if split == "train":
        spec = CropSpec(config.crop_size, random=True, flip=True, small_images=config.small_images)
        pictures, names, skipped = _fitted([photographs[name] for name in TRAIN_PHOTOS], list(TRAIN_PHOTOS), spec)
        items = np.arange(config.num_train) % len(pictures)
        dataset = LazyImages(ArraySource(pictures, names), items, spec, config.seed, name="photos/train")
        dataset.skipped = skipped
        return dataset
    spec = CropSpec(config.crop_size, small_images=config.small_images)
    pictures, _, skipped = _fitted([photographs[name] for name in HELD_OUT_PHOTOS], list(HELD_OUT_PHOTOS), spec)
    return ImageDataset(grid_crops(pictures, config.crop_size), name="photos/test", skipped=skipped)
