"""Image grids as exact-size PNGs (no plotting library: one pixel block per image pixel)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PAD = 2
BACKGROUND = 0.5  # mid grey separates tiles of dark and light images alike


def grid_size(rows: int, cols: int, height: int, width: int, scale: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``rows × cols`` tiles of ``height × width`` images."""
    return cols * (width * scale + PAD) + PAD, rows * (height * scale + PAD) + PAD


def image_grid(images: torch.Tensor | np.ndarray, scale: int | None = None,
               value_range: tuple[float, float] = (0.0, 1.0)) -> Image.Image:
    """images: ``(rows, cols, C, H, W)`` with C in {1, 3}, values in ``value_range`` (clipped).

    Each image pixel becomes a ``scale × scale`` block (default: tiles about 64 pixels high), so small
    images (8×8 digits) stay readable and sharp.
    """
    images = torch.as_tensor(images).detach().float().cpu()
    if images.ndim != 5 or images.shape[2] not in (1, 3):
        raise ValueError(f"image_grid wants (rows, cols, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    low, high = value_range
    images = ((images - low) / (high - low)).clamp(0, 1)
    rows, cols, channels, height, width = images.shape
    scale = scale or max(1, round(64 / height))
    if channels == 1:
        images = images.expand(rows, cols, 3, height, width)
    tiles = images.repeat_interleave(scale, dim=3).repeat_interleave(scale, dim=4)
    total_width, total_height = grid_size(rows, cols, height, width, scale)
    canvas = torch.full((3, total_height, total_width), BACKGROUND)
    tile_h, tile_w = height * scale, width * scale
    for r in range(rows):
        for c in range(cols):
            top, left = PAD + r * (tile_h + PAD), PAD + c * (tile_w + PAD)
            canvas[:, top:top + tile_h, left:left + tile_w] = tiles[r, c]
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def save_grid(path: str | Path, images, scale: int | None = None,
              value_range: tuple[float, float] = (0.0, 1.0)) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, scale, value_range).save(path)
    return path


def square_grid(images):
    """``(n, C, H, W)`` → ``(rows, cols, C, H, W)`` for ``save_grid``, as square as n allows (the last row
    padded with blank tiles)."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    blank = torch.ones((rows * cols - len(images), *images.shape[1:]), dtype=images.dtype)
    return torch.cat([images, blank]).reshape(rows, cols, *images.shape[1:])
