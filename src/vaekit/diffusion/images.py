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


GOLDEN = (5 ** 0.5 - 1) / 2


def spread_order(names: list[str]) -> list[str]:
    """``names`` reordered so that every prefix is spread evenly over the original order: position
    ⌊frac(k·φ)·n⌋ for k = 0, 1, 2, … (φ the golden ratio, whose multiples fill [0, 1) with the lowest
    discrepancy), each position once. In a folder sorted by class, any prefix then holds every class in
    proportion to its size, deterministically."""
    n, seen, out = len(names), set(), []
    for k in range(8 * n + 16):
        i = int((k * GOLDEN) % 1.0 * n)
        if i not in seen:
            seen.add(i)
            out.append(names[i])
    return out + [name for i, name in enumerate(names) if i not in seen]


class FolderImages:
    """The images of a folder at one resolution, read when asked for and never all held in memory (a folder
    of thousands of photographs does not fit): ``(N, C, r, r)`` in [-1, 1]. An image that cannot be read is
    skipped and named once, as every other command does (the export skips the same ones)."""

    def __init__(self, folder: Path, names: list[str], resolution: int):
        self.folder, self.names, self.resolution = folder, list(names), resolution
        self.unreadable: set[str] = set()

    def _one(self, name: str) -> torch.Tensor | None:
        if name in self.unreadable:
            return None
        try:
            return read_image(self.folder / name, resolution=self.resolution)
        except VaekitError as err:
            self.unreadable.add(name)
            log.warning("skipped: %s", err)
            return None

    def _stacked(self, pairs: list[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, list[str]]:
        if not pairs:
            raise VaekitError(f"no image in {self.folder} could be read")
        return torch.cat([image for _, image in pairs]), [name for name, _ in pairs]

    def read(self, names: list[str]) -> tuple[torch.Tensor, list[str]]:
        """The readable ones of ``names``, stacked, and their names."""
        pairs = [(name, image) for name in names if (image := self._one(name)) is not None]
        return self._stacked(pairs)

    def spread(self, count: int, excluding: set[str] = frozenset()) -> torch.Tensor:
        """Up to ``count`` readable images spread over the whole folder (``spread_order``), none of
        ``excluding``: a labelled folder is sorted by class, so its first names would be one or two classes."""
        pairs = []
        for name in spread_order(self.names):
            if len(pairs) == count:
                break
            if name not in excluding and (image := self._one(name)) is not None:
                pairs.append((name, image))
        return self._stacked(pairs)[0]
