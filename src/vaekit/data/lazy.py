"""Datasets that read each example when it is asked for: memory does not grow with the number of images.

``LazyImages`` turns item i of a ``PictureSource`` (files of a folder, rows of a Hugging Face table,
pictures in memory) into an ``(S, S, C)`` example by a ``CropSpec``, with the example's random choices
drawn from ``(seed, epoch, index)``. A file that cannot be read is never fatal: the example is
replaced by the next readable one (deterministically, so every process and worker agrees), and the
file is named in a warning and in ``skipped``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from vaekit.data.base import ImageData, batch_buffer
from vaekit.data.transforms import CropSpec, crop_array, crop_picture, example_draws, fit_image, picture_array, to_batch
from vaekit.errors import VaekitError

log = logging.getLogger("vaekit")

READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
"""What Pillow raises for files that are not (whole, sane) images."""

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def find_images(root: Path) -> list[Path]:
    """Every file with an image extension below ``root`` (recursively), sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def list_image_folder(root: str | Path) -> tuple[Path, list[str]]:
    """(root, the sorted image files below it as relative POSIX paths), or a one-line error."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise VaekitError(f"data.path {root} is not a folder of images")
    files = [p.relative_to(root).as_posix() for p in find_images(root)]
    if not files:
        raise VaekitError(
            f"{root} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); point data.path at a folder of images")
    return root, files


class PictureSource:
    """Item i of a collection of pictures: its name, and the example a CropSpec makes of it."""

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, item: int) -> str:
        raise NotImplementedError

    def example(self, item: int, spec: CropSpec, draws: tuple[float, float, float] | None) -> np.ndarray:
        """``(S, S, C)`` uint8; raises one of READ_ERRORS when the picture cannot be read."""
        raise NotImplementedError


class FileSource(PictureSource):
    """Image files below ``root``. With a ``cache_bytes`` budget, each file is decoded once: its fitted
    picture (decoded, upright, resized as the spec says, ``transforms.fit_image``) is kept in memory while
    the pictures kept so far fit the budget, and later examples of it are crops of that array (the same
    pixels as decoding it again). Files beyond the budget are decoded every time they are read."""

    def __init__(self, root: Path, files: Sequence[str], cache_bytes: int = 0):
        self.root = root
        self.files = list(files)
        self.cache_bytes = cache_bytes
        self._cache: dict[int, np.ndarray] = {}
        self.cached_bytes = 0
        self._budget_reported = False

    def __len__(self) -> int:
        return len(self.files)

    def name(self, item: int) -> str:
        return self.files[item]

    def example(self, item: int, spec: CropSpec, draws: tuple[float, float, float] | None) -> np.ndarray:
        picture = self._cache.get(item)
        if picture is not None:
            return crop_array(picture, spec, draws)
        with Image.open(self.root / self.files[item]) as image:
            if self.cached_bytes >= self.cache_bytes:
                return crop_picture(image, spec, draws)
            picture = picture_array(fit_image(image, spec), spec)
        self._keep(item, picture)
        return crop_array(picture, spec, draws)

    def _keep(self, item: int, picture: np.ndarray) -> None:
        if self.cached_bytes + picture.nbytes <= self.cache_bytes:
            self._cache[item] = picture
            self.cached_bytes += picture.nbytes
        elif not self._budget_reported:
            self._budget_reported = True
            log.info("data.cache_mb (%d MB) is full after %d of %d images: the others are decoded each time they "
                     "are read", self.cache_bytes >> 20, len(self._cache), len(self.files))


class RowSource(PictureSource):
    """Rows of a Hugging Face ``datasets`` table whose image column is stored undecoded (bytes or path)."""

    def __init__(self, table, column: str, split: str):
        self.table, self.column, self.split = table, column, split

    def __len__(self) -> int:
        return len(self.table)

    def name(self, item: int) -> str:
        return f"{self.split}[{item}]"

    def example(self, item: int, spec: CropSpec, draws: tuple[float, float, float] | None) -> np.ndarray:
        return picture_from_cell(self.table[item][self.column], spec, draws)


def picture_from_cell(value, spec: CropSpec, draws: tuple[float, float, float] | None) -> np.ndarray:
    """A ``datasets`` image cell (``{"bytes", "path"}``, or an already decoded PIL image) -> example."""
    if isinstance(value, Image.Image):
        return crop_picture(value, spec, draws)
    if isinstance(value, dict) and value.get("bytes") is not None:
        with Image.open(io.BytesIO(value["bytes"])) as image:
            return crop_picture(image, spec, draws)
    if isinstance(value, dict) and value.get("path"):
        with Image.open(value["path"]) as image:
            return crop_picture(image, spec, draws)
    raise ValueError(f"not an image: {type(value).__name__}")


class ArraySource(PictureSource):
    """Pictures already in memory, ``(H, W, 3)`` uint8 at their working size (the built-in photos)."""

    def __init__(self, pictures: Sequence[np.ndarray], names: Sequence[str]):
        self.pictures, self.names = list(pictures), list(names)

    def __len__(self) -> int:
        return len(self.pictures)

    def name(self, item: int) -> str:
        return self.names[item]

    def example(self, item: int, spec: CropSpec, draws: tuple[float, float, float] | None) -> np.ndarray:
        return crop_array(self.pictures[item], spec, draws)


class LazyImages(ImageData):
    """Example ``k`` is source item ``items[k]`` through ``spec``; random choices from (seed, epoch, k).

    Values are uint8 read as [0, 1]. ``items`` may repeat source items (several crops per picture).
    """

    def __init__(self, source: PictureSource, items: Sequence[int], spec: CropSpec, seed: int = 0,
                 labels: np.ndarray | None = None, class_names: Sequence[str] | None = None, name: str = ""):
        self.source = source
        self.items = np.asarray(items, dtype=np.int64)
        self.spec = spec
        self.seed = seed
        self._unreadable: dict[int, str] = {}
        super().__init__(labels, len(self.items), class_names, (0.0, 1.0), name)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.spec.channels, self.spec.size, self.spec.size

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, position: int, draws: tuple[float, float, float] | None) -> np.ndarray | None:
        item = int(self.items[position])
        if item in self._unreadable:
            return None
        try:
            return self.source.example(item, self.spec, draws)
        except READ_ERRORS as err:
            reason = f"{type(err).__name__}: {err}"
            self._unreadable[item] = reason
            self.skipped.append((self.source.name(item), reason))
            log.warning("skipped %s in %s, which cannot be read as an image (%s); the next readable image takes "
                        "its place", self.source.name(item), self.name, reason)
            return None

    def example(self, k: int) -> tuple[np.ndarray, int]:
        """Example ``k`` (or, when its picture cannot be read, the next readable one after it, with the
        random choices of position k) and the position whose label goes with it."""
        for offset in range(len(self)):
            position = (k + offset) % len(self)
            draws = example_draws(self.seed, self.epoch, k) if self.spec.random else None
            array = self._read(position, draws)
            if array is not None:
                return array, position
        raise VaekitError(f"none of the {len(self)} images of {self.name} can be read "
                          f"({len(self._unreadable)} skipped, e.g. {next(iter(self._unreadable.values()), '')})")

    def _gather(self, indices: list[int]) -> tuple[torch.Tensor, list[int]]:
        examples = [self.example(k) for k in indices]
        out = batch_buffer((len(examples), *self.image_shape))
        return to_batch([array for array, _ in examples], out), [position for _, position in examples]
