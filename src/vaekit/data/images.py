"""Image files for the image autoencoders: RGB tensors in [-1, 1], with every odd case handled.

Conversions (documented, not errors): 16-bit → 8-bit by scaling, palette/CMYK/grayscale → RGB, alpha
composited onto white, EXIF orientation applied. Errors (one line each): unreadable, corrupt or
truncated files, zero-size images, and images above the pixel limit (Pillow's decompression-bomb
guard, here configurable: ``max_pixels``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from vaekit.data.transforms import to_mode
from vaekit.errors import VaekitError

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own default limit (about 13,000 × 13,000)


def open_rgb(path: str | Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """A decoded 8-bit RGB PIL image, EXIF orientation applied; ``VaekitError`` (one line) otherwise.
    ``path`` may be an open binary file (e.g. a dataset's bytes), called ``name`` in messages."""
    if not hasattr(path, "read"):
        path = Path(path)
    name = name or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own limit applies instead
            try:
                with Image.open(path) as image:
                    width, height = image.size
                    if width == 0 or height == 0:
                        raise VaekitError(f"{name} is an empty image ({width}×{height})")
                    if width * height > max_pixels:
                        raise VaekitError(
                            f"{name} has {width}×{height} = {width * height:,} pixels, above the limit of "
                            f"{max_pixels:,} (a guard against decompression bombs); raise it with --max-pixels "
                            "if the file is trusted")
                    image.load()
                    return to_mode(ImageOps.exif_transpose(image), grayscale=False)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except FileNotFoundError:
        raise VaekitError(f"no such image file: {name}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise VaekitError(f"cannot read {name} as an image ({err})") from None


def to_tensor(image: Image.Image, resolution: int | None = None) -> torch.Tensor:
    """An RGB PIL image -> ``(1, 3, H, W)`` float32 in [-1, 1]; centre-cropped and resized to
    ``resolution``² first when given."""
    if resolution is not None:
        image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float().div_(127.5).sub_(1.0)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, resolution: int | None = None) -> torch.Tensor:
    """``(1, 3, H, W)`` float32 in [-1, 1] (``resolution``² when given: centre crop + resize)."""
    return to_tensor(open_rgb(path, max_pixels), resolution)


def write_image(path: str | Path, image: torch.Tensor) -> Path:
    """Save ``(3, H, W)`` or ``(1, 3, H, W)`` in [-1, 1] (clipped) as an 8-bit image file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = image.detach().float().cpu().reshape(-1, *image.shape[-2:])
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(array, "RGB").save(path)
    return path
