"""From a decoded picture to a training example: resize, crop, flip, 8-bit mode.

Every random choice of an example (crop position, flip) is a function of ``(seed, epoch, index)``, so
an example is the same whichever process or loader worker reads it and whenever it is read again
(a resumed run), and differs from one epoch to the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from vaekit.io.images import to_mode

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
    """Convert images to one channel."""
    small_images: Literal["upscale", "skip"] = "upscale"
    """Images smaller than the crop: upscale them to fit, or skip them (named in the run's metrics)."""

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3


_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser: a bijective 64-bit mix (Steele, Lea & Flood 2014)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _example_key(seed: int, epoch: int, index: int) -> int:
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK) ^ (epoch & _MASK)) ^ (index & _MASK))


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends on (seed, epoch, index) alone (for a per-example ``torch.Generator``)."""
    return _splitmix64(_example_key(seed, epoch, index) + 3) >> 1


def example_draws(seed: int, epoch: int, index: int) -> tuple[float, float, float]:
    """Three uniform numbers in [0, 1) that depend on (seed, epoch, index) alone: a counter-based hash
    (SplitMix64 chained over the three), a few microseconds where a seeded numpy Generator per example
    costs ~25 — a few per cent of decoding a photograph."""
    key = _example_key(seed, epoch, index)
    return tuple(_splitmix64(key + i) / 2.0 ** 64 for i in range(3))


@dataclass(frozen=True)
class Placement:
    """Where the crop goes in a picture of the given size, and whether it is mirrored."""

    top: int
    left: int
    flip: bool


def place_crop(height: int, width: int, spec: CropSpec, draws: tuple[float, float, float] | None) -> Placement:
    """The crop's position: uniform over every valid position when ``spec.random`` (from the example's
    three uniform ``draws``: position and flip), else centred."""
    if spec.random and draws is not None:
        u_top, u_left, u_flip = draws
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


def fit_image(image: Image.Image, spec: CropSpec) -> Image.Image:
    """An opened (not necessarily loaded) PIL image, decoded, upright (EXIF orientation) and resized by
    the spec's short side and small-image policy: the picture a crop is taken from. Its mode is RGB or L
    (other modes are converted; the spec's own mode is applied to the crop, where that gives the same
    pixels).

    A JPEG that will be shrunk is decoded at a reduced scale (libjpeg's DCT scaling, ``Image.draft``)
    when that still leaves at least the wanted size.
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
    return image


def picture_array(image: Image.Image, spec: CropSpec) -> np.ndarray:
    """A fitted picture (``fit_image``) in the spec's mode as ``(H, W, C)`` uint8, for ``crop_array``."""
    array = np.asarray(to_mode(image, spec.grayscale), dtype=np.uint8)
    return array[:, :, None] if spec.grayscale else array


def crop_picture(image: Image.Image, spec: CropSpec, draws: tuple[float, float, float] | None) -> np.ndarray:
    """An opened (not necessarily loaded) PIL image -> ``(size, size, C)`` uint8 (examples stay
    channels-last until ``to_batch`` converts a whole batch in one pass): ``fit_image``, then the crop,
    converted to the spec's mode (the same pixels as ``crop_array`` of the whole fitted picture)."""
    image = fit_image(image, spec)
    place = place_crop(image.height, image.width, spec, draws)
    patch = image.crop((place.left, place.top, place.left + spec.size, place.top + spec.size))
    array = picture_array(patch, spec)
    return array[:, ::-1] if place.flip else array


def crop_array(picture: np.ndarray, spec: CropSpec, draws: tuple[float, float, float] | None) -> np.ndarray:
    """An ``(H, W, C)`` uint8 picture already at its working size -> a ``(size, size, C)`` uint8 view."""
    place = place_crop(picture.shape[0], picture.shape[1], spec, draws)
    patch = picture[place.top:place.top + spec.size, place.left:place.left + spec.size]
    return patch[:, ::-1] if place.flip else patch


def to_batch(examples: list[np.ndarray], out: torch.Tensor | None = None) -> torch.Tensor:
    """``(H, W, C)`` uint8 examples -> ``(B, C, H, W)`` float32 in [0, 1] (into ``out`` when given): each
    example is transposed and divided by 255 in one pass straight into its place in the batch."""
    height, width, channels = examples[0].shape
    if out is None:
        out = torch.empty((len(examples), channels, height, width), dtype=torch.float32)
    for target, example in zip(out.numpy(), examples):
        np.divide(example.transpose(2, 0, 1), np.float32(255.0), out=target, dtype=np.float32)
    return out


def fit_picture(picture: np.ndarray, spec: CropSpec) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture resized by the spec's short side and small-image policy."""
    wanted = target_size(picture.shape[1], picture.shape[0], spec)
    if wanted is None:
        return picture
    return np.asarray(Image.fromarray(picture).resize(wanted, Image.Resampling.BICUBIC))
