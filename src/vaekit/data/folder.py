"""Any folder of images, for the small models: resized, grayscale or RGB, labels from sub-folders.

Files that cannot be decoded (corrupt, truncated, not an image) are skipped, counted and named in a
warning; they never stop a run. Odd modes (16-bit, palette, alpha, CMYK) are converted, odd sizes and
aspect ratios are centre-cropped to a square and resized.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vaekit.data.base import ImageDataset
from vaekit.errors import VaekitError
from vaekit.registry import DATASETS

log = logging.getLogger("vaekit")

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class FolderConfig:
    path: str = ""
    image_size: int = 28
    grayscale: bool = True
    test_fraction: float = 0.1
    seed: int = 0
    """Seeds the train/test split of the sorted file list."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is required: the folder of images to train on")
        if self.image_size < 2:
            raise ValueError(f"image_size must be at least 2, got {self.image_size}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")


def find_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def to_mode(image: Image.Image, grayscale: bool) -> Image.Image:
    """Convert any PIL mode to 8-bit L or RGB; transparency is composited onto white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("L" if grayscale else "RGB")


def prepare(image: Image.Image, image_size: int, grayscale: bool) -> np.ndarray:
    """A decoded PIL image -> ``(C, S, S)`` uint8: EXIF orientation, 8-bit L/RGB, centre crop + resize."""
    image = to_mode(ImageOps.exif_transpose(image), grayscale)
    array = np.asarray(ImageOps.fit(image, (image_size, image_size), Image.Resampling.BICUBIC), dtype=np.uint8)
    return array[None] if grayscale else array.transpose(2, 0, 1)


def load_image(path: Path, image_size: int, grayscale: bool) -> np.ndarray:
    """``(C, S, S)`` uint8; raises OSError/ValueError/SyntaxError for files that are not valid images."""
    with Image.open(path) as image:
        image.load()  # decode now, so a truncated file fails here and not later
        return prepare(image, image_size, grayscale)


def read_folder(root: str, load) -> tuple[list[np.ndarray], list[Path], list[tuple[str, str]]]:
    """``load(path)`` every image file below ``root``: (arrays, their paths, (file, reason) skipped).
    Unreadable files are skipped and named in a warning; fewer than two readable images is an error."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise VaekitError(f"data.path {root} is not a folder of images")
    files = find_images(root_path)
    if not files:
        raise VaekitError(
            f"{root} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); point data.path at a folder of images"
        )
    images, kept, skipped = [], [], []
    for path in files:
        try:
            images.append(load(path))
            kept.append(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            skipped.append((str(path), f"{type(err).__name__}: {err}"))
    if skipped:
        names = ", ".join(Path(p).name for p, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        log.warning("skipped %d of %d files in %s that are not readable images: %s", len(skipped), len(files), root, names)
    if len(kept) < 2:
        raise VaekitError(f"{root} has {len(kept)} readable image(s) ({len(skipped)} skipped); at least 2 are needed")
    return images, kept, skipped


@functools.lru_cache(maxsize=2)
def _load_folder(root: str, image_size: int, grayscale: bool):
    images, kept, skipped = read_folder(root, lambda path: load_image(path, image_size, grayscale))
    relative = [p.relative_to(root) for p in kept]
    if all(len(r.parts) >= 2 for r in relative):
        class_names = sorted({r.parts[0] for r in relative})
        labels = np.array([class_names.index(r.parts[0]) for r in relative])
    else:
        class_names, labels = None, None
    return np.stack(images), labels, class_names, tuple(skipped)


@DATASETS.register("folder", FolderConfig)
def folder(config: FolderConfig, split: str) -> ImageDataset:
    images, labels, class_names, skipped = _load_folder(str(Path(config.path).resolve()), config.image_size, config.grayscale)
    order = np.random.default_rng(config.seed).permutation(len(images))
    num_test = max(1, round(len(images) * config.test_fraction))
    index = np.sort(order[:num_test] if split == "test" else order[num_test:])
    return ImageDataset(images[index], None if labels is None else labels[index], class_names,
                        name=f"folder:{config.path}/{split}", skipped=skipped)
