"""Image files for the image autoencoders: RGB tensors in [-1, 1], with every odd case handled.

Conversions (documented, not errors): 16-bit → 8-bit by scaling, palette/CMYK/grayscale → RGB, alpha
composited onto white, EXIF orientation applied. Errors (one line each): unreadable, corrupt or
truncated files, zero-size images, and images above the pixel limit (Pillow's decompression-bomb
guard, here configurable: ``max_pixels``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from vaekit.errors import VaekitError

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own default limit (about 13,000 × 13,000)
EXOTIC_MODES = ("I", "I;16", "I;16B", "I;16L", "F")


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


def open_rgb(path: str | Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """A decoded 8-bit RGB PIL image, EXIF orientation applied; ``VaekitError`` (one line) otherwise.
    ``path`` may be an open binary file (e.g. a dataset's bytes), called ``name`` in messages."""
    if not hasattr(path, "read"):
        path = Path(path)
    name = name or str(path)
    try:
        with _open_within(path, max_pixels) as image:
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
    except FileNotFoundError:
        raise VaekitError(f"no such image file: {name}") from None
    except Image.DecompressionBombError as err:
        raise VaekitError(f"{name} is above Pillow's decompression-bomb limit ({err}); raise --max-pixels "
                          "if the file is trusted") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise VaekitError(f"cannot read {name} as an image ({err})") from None


_RAISED_LIMIT = threading.Lock()


def _open_within(path, max_pixels: int) -> Image.Image:
    """``Image.open`` (the header only). Pillow refuses images above twice its process-wide
    ``MAX_IMAGE_PIXELS`` as it opens them; only when ``max_pixels`` allows more is that limit lifted, for
    the header read alone, under a lock, and restored: normally no global state is touched."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or max_pixels <= 2 * limit:
        return Image.open(path)
    with _RAISED_LIMIT:
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = limit


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
    """Save ``(C, H, W)`` or ``(1, C, H, W)`` in [-1, 1] (clipped), C = 1 (grayscale) or 3 (RGB), as an
    8-bit image file."""
    path = Path(path)
    image = image.detach().float().cpu().reshape(-1, *image.shape[-2:])
    if image.shape[0] not in (1, 3):
        raise VaekitError(f"cannot write a {image.shape[0]}-channel image as {path.name}: images have 1 or 3 channels")
    path.parent.mkdir(parents=True, exist_ok=True)
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    if image.shape[0] == 1:
        Image.fromarray(array[:, :, 0], "L").save(path)
    else:
        Image.fromarray(array, "RGB").save(path)
    return path


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB images ``(B, 3, H, W)`` as a model with ``channels`` input channels takes them: unchanged for 3,
    ITU-R 601 luma (Pillow's "L": 0.299 R + 0.587 G + 0.114 B) for 1."""
    if channels == x.shape[1]:
        return x
    if channels == 1 and x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True)
    raise VaekitError(f"cannot give {x.shape[1]}-channel images to a model that takes {channels}")
