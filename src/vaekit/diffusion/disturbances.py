"""Known disturbances of real images, each at rising strengths: the battery a judge of generated images must
pass (its distance to real images rises strictly with each one's strength). They are the ways samples fail:
blur, noise, compression artefacts, missing classes (mode dropping) and broken local structure.

Every function takes images ``(N, C, H, W)`` in [-1, 1] and returns as many, in the same range; each draw is
seeded, so a battery is the same on every run.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of std ``sigma`` pixels (a kernel of ±3σ)."""
    import torchvision.transforms.functional as TF

    return TF.gaussian_blur(images, 2 * math.ceil(3 * sigma) + 1, sigma)


def noise(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Additive Gaussian noise of std ``sigma`` (on the [-1, 1] scale), clipped."""
    return (images + sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image saved as a JPEG of ``quality`` (Pillow) and read back."""
    from PIL import Image

    out = []
    for image in images:
        buffer = io.BytesIO()
        pixels = ((image + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(buffer, "JPEG", quality=quality)
        decoded = torch.from_numpy(np.array(Image.open(buffer))).float() / 127.5 - 1
        out.append(decoded[None] if decoded.ndim == 2 else decoded.permute(2, 0, 1))
    return torch.stack(out)


def shuffle(images: torch.Tensor, block: int) -> torch.Tensor:
    """Pixels permuted at random inside each ``block`` × ``block`` square (sides must be multiples of it)."""
    b, c, h, w = images.shape
    tiles = images.reshape(b, c, h // block, block, w // block, block).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(-1, c, block * block)
    generator = torch.Generator().manual_seed(2)
    order = torch.stack([torch.randperm(block * block, generator=generator) for _ in range(len(tiles))])
    tiles = torch.gather(tiles, 2, order[:, None, :].expand_as(tiles))
    return tiles.reshape(b, h // block, w // block, c, block, block).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def drop_classes(images: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """As many images as before, drawn in turn from those whose label is not among the first ``classes``."""
    kept = torch.nonzero(labels >= classes).flatten()
    return images[kept[torch.arange(len(images)) % len(kept)]]


BATTERY = {"blur σ (px)": (blur, (1.0, 2.0, 3.0)), "noise σ": (noise, (0.05, 0.1, 0.2, 0.4)),
           "JPEG quality": (jpeg, (90, 70, 50, 30, 10)), "dropped classes": (drop_classes, (2, 4, 6, 8)),
           "pixel shuffle block": (shuffle, (2, 4, 8))}
"""Each disturbance with its strengths, weakest first."""


def battery(judge, images: torch.Tensor, labels: torch.Tensor) -> dict[str, list[tuple[float, dict]]]:
    """``judge.scores`` of ``images`` undisturbed (strength 0) and under each disturbance of ``BATTERY`` at each
    strength: {disturbance: [(strength, scores), ...]}."""
    undisturbed = judge.scores(images, None)
    out = {}
    for name, (disturb, strengths) in BATTERY.items():
        rows = [(0, undisturbed)]
        for strength in strengths:
            disturbed = disturb(images, labels, strength) if disturb is drop_classes else disturb(images, strength)
            rows.append((strength, judge.scores(disturbed, None)))
        out[name] = rows
    return out
