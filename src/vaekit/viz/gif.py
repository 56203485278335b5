"""Animated GIFs of decoded frames."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from vaekit.viz.grids import image_grid


def save_gif(path: str | Path, frames: torch.Tensor, frame_ms: int = 80, scale: int | None = None) -> Path:
    """frames: ``(T, C, H, W)`` in [0, 1] -> a looping GIF with T frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = np.stack([np.asarray(image_grid(frame[None, None], scale)) for frame in frames])
    iio.imwrite(path, pictures, extension=".gif", duration=frame_ms, loop=0)
    return path
