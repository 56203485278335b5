"""From a decoded picture to a training example: resize, crop, flip, 8-bit mode.

Every random choice of an example (crop position, flip) is drawn from ``(seed, epoch, index)``, so
an example is the same whichever process or loader worker reads it and whenever it is read again
(a resumed run), and differs from one epoch to the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

EXOTIC_MODES = ("I", "I;16", "I;16B", "I;16L", "F")


@dataclass(frozen=True)
class CropSpec:
    """How a picture becomes a ``(C, size, size)`` uint8 example.

    ``short_side``: resize (bicubic) so the shorter side is this many pixels first (None: keep the
    file's size). ``random``: crop at a random position with a random horizontal flip (``flip``) —
    training — instead of the centre. Pictures still smaller than ``size`` are upscaled (aspect
    kept) or refused (``small_images="skip"``: a ``ValueError``, so the reader skips them).
    """

    size: int
    short_side: int | None = None
    random: bool = False
    flip: bool = False
    grayscale: bool = False
    small_images: Literal["upscale", "skip"] = "upscale"

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


@dataclass(frozen=True)
class Placement:
    """Where the crop goes in a picture of the given size, and whether it is mirrored."""

    top: int
    left: int
    flip: bool


def place_crop(height: int, width: int, spec: CropSpec, rng: np.random.Generator | None) -> Placement:
    """The crop's position: uniform over every valid position when ``spec.random`` (three uniform
    draws, made whatever the picture's size, so one bad file cannot shift later examples' choices),
    else centred."""
    if spec.random and rng is not None:
        u_top, u_left, u_flip = rng.random(3)
        top = min(int(u_top * (height - spec.size + 1)), height - spec.size)
        left = min(int(u_left * (width - spec.size + 1)), width - spec.size)
        return Placement(top, left, spec.flip and u_flip < 0.5)
    return Placement((height - spec.size) // 2, (width - spec.size) // 2, False)


def target_size(width: int, height: int, spec: CropSpec) -> tuple[int, int] | None:
    """The size to resize to before cropping (``short_side``, then the small-image policy), or None."""
    short = min(width, height)
    wanted = spec.short_side if spec.short_side is not None else short
    if wanted < spec.size:
        wanted = spec.size
    if short < spec.size and spec.small_images == "skip":
        raise ValueError(f"{width}×{height} is smaller than the {spec.size}-pixel crop (data.small_images=skip)")
    if wanted == short:
        return None
    scale = wanted / short
    return max(wanted, round(width * scale)), max(wanted, round(height * scale))


def to_mode(image: Image.Image, grayscale: bool) -> Image.Image:
    """Convert any PIL mode to 8-bit L or RGB; transparency is composited onto white."""
    if image.mode in EXOTIC_MODES:
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    wanted = "L" if grayscale else "RGB"
    return image if image.mode == wanted else image.convert(wanted)


def crop_picture(image: Image.Image, spec: CropSpec, rng: np.random.Generator | None) -> np.ndarray:
    """An opened (not necessarily loaded) PIL image -> ``(C, size, size)`` uint8.

    EXIF orientation is applied. A JPEG that will be shrunk is decoded at a reduced scale (libjpeg's
    DCT scaling, ``Image.draft``) when that still leaves at least the wanted size. The mode is
    converted after cropping where that gives the same pixels (plain RGB/L), before it otherwise.
    """
    wanted = target_size(*image.size, spec)
    if wanted is not None and image.format == "JPEG" and wanted[0] < image.size[0]:
        image.draft(image.mode, wanted)
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    wanted = target_size(*image.size, spec)  # the draft and the orientation may have changed the size
    if wanted is not None or image.mode not in ("RGB", "L"):
        image = to_mode(image, spec.grayscale)
    if wanted is not None:
        image = image.resize(wanted, Image.Resampling.BICUBIC)
    place = place_crop(image.height, image.width, spec, rng)
    patch = to_mode(image.crop((place.left, place.top, place.left + spec.size, place.top + spec.size)), spec.grayscale)
    array = np.asarray(patch, dtype=np.uint8)
    if place.flip:
        array = array[:, ::-1]
    return np.ascontiguousarray(array[None] if spec.grayscale else array.transpose(2, 0, 1))


def crop_array(picture: np.ndarray, spec: CropSpec, rng: np.random.Generator | None) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture already at its working size -> ``(3, size, size)`` uint8."""
    place = place_crop(picture.shape[0], picture.shape[1], spec, rng)
    patch = picture[place.top:place.top + spec.size, place.left:place.left + spec.size]
    if place.flip:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch.transpose(2, 0, 1))


def fit_picture(picture: np.ndarray, spec: CropSpec) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture resized by the spec's short side and small-image policy."""
    wanted = target_size(picture.shape[1], picture.shape[0], spec)
    if wanted is None:
        return picture
    return np.asarray(Image.fromarray(picture).resize(wanted, Image.Resampling.BICUBIC))

