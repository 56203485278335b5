"""The images a diffusability report compares autoencoders on, when they are built in, and the reading of a
folder of them. Built-in images are never images any compared autoencoder trained on: the report's own
stream of ``objects`` and the held-out photographs of ``photos``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from vaekit.config import load_config
from vaekit.data import build_dataset
from vaekit.errors import VaekitError
from vaekit.io.images import read_image

log = logging.getLogger("vaekit")


REPORT_STREAM = 2
"""The ``objects`` stream of the report's images: no autoencoder trains on it (training is stream 0, testing
1), nor the judge (``judge.OBJECTS_STREAM``)."""


def write_objects(folder: Path, size: int, count: int, stream: int = REPORT_STREAM) -> None:
    """``count`` images of the built-in ``objects`` dataset (the report's own stream) as PNGs, one sub-folder
    per class."""
    from PIL import Image

    from vaekit.data.objects import CLASS_NAMES, make_objects

    images, labels = make_objects(count, size, seed=0, stream=stream)
    for name in CLASS_NAMES:
        (folder / name).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / CLASS_NAMES[label] / f"{i:05d}.png")


def write_photo_crops(folder: Path, size: int, count: int) -> torch.Tensor:
    """``count`` random ``size``² crops of the built-in photographs (the ``photos`` dataset's training
    crops) written to ``folder`` as PNGs; returns them, ``(count, 3, size, size)`` in [0, 1]."""
    from PIL import Image

    config = load_config(None, ["data.name=photos", f"data.crop_size={size}", f"data.num_train={count}"])
    images, _ = build_dataset(config.data, "train").__getitems__(list(range(count)))
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{i:05d}.png")
    return images


def write_held_out_photos(folder: Path, size: int, count: int) -> int:
    """Up to ``count`` non-overlapping ``size``² tiles of the ``photos`` dataset's held-out photographs (which
    no autoencoder trained on ``photos`` ever sees) written to ``folder`` as PNGs; returns how many."""
    from PIL import Image

    config = load_config(None, ["data.name=photos", f"data.crop_size={size}"])
    tiles = build_dataset(config.data, "test").images[:count]
    if len(tiles) < count:
        log.info("diffusability: the held-out photographs give %d tiles of %d², not %d", len(tiles), size, count)
    folder.mkdir(parents=True)
    for i, tile in enumerate(tiles):
        Image.fromarray(np.ascontiguousarray(tile.numpy().transpose(1, 2, 0))).save(folder / f"{i:05d}.png")
    return len(tiles)


def readable_images(folder: Path, names: list[str], resolution: int) -> dict[str, torch.Tensor]:
    """Every image of ``names`` that can be read, ``(1, C, r, r)`` in [-1, 1]; each one that cannot is
    skipped and named (the export skips the same ones), as every other command does."""
    images = {}
    for name in names:
        try:
            images[name] = read_image(folder / name, resolution=resolution)
        except VaekitError as err:
            log.warning("skipped: %s", err)
    if not images:
        raise VaekitError(f"no image in {folder} could be read")
    return images
