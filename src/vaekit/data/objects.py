"""``objects``: a built-in, generated, labelled colour image dataset for image autoencoders and Stage B.

Each image is one of ten object kinds (the label) drawn anti-aliased in a random colour, at a random
size, position and rotation, over a random background: a two-colour linear gradient, stripes, a
checkerboard, or smooth colour noise. Every image is a function of (seed, split, index) alone, so the
dataset is the same on every machine and needs no download; 10,000 images at 32² take about a second.

It is rich enough to tell latent spaces apart by what a denoiser generates from them: the class of a
generated image must be recognisable (the diffusability report's classifier scores it), its colours and
textures vary continuously, and f = 4 and f = 8 autoencoders both lose something at 32² and 64².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaekit.data.base import ImageDataset
from vaekit.registry import DATASETS

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart", "crescent", "arrow")
SUPERSAMPLING = 4
"""Sub-pixels per pixel side: the coverage of each pixel by the object is the mean over 4 × 4 points."""


@dataclass
class ObjectsConfig:
    num_train: int = 10000
    """Training images generated."""
    num_test: int = 2000
    """Test images generated (a separate stream: the split is fixed)."""
    image_size: int = 32
    """Side of the square images (32 and 64 are the sizes it is designed for)."""
    seed: int = 0
    """Seeds the generator."""

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError("num_train and num_test must be at least 1")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")


def object_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points (u, v) of the object's own frame (unit size, centred) are inside object ``kind``."""
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    au, av = np.abs(u), np.abs(v)
    if kind == 0:
        return r <= 0.9
    if kind == 1:
        return np.maximum(au, av) <= 0.72
    if kind == 2:
        return (v >= -0.5) & (v <= 1.0 - np.sqrt(3.0) * au)
    if kind == 3:  # five points: the radius swings between 0.4 and 1 with the angle
        return r <= 0.4 + 0.6 * np.abs(np.cos(2.5 * (theta - np.pi / 2))) ** 3
    if kind == 4:
        return ((au <= 0.28) & (av <= 0.9)) | ((av <= 0.28) & (au <= 0.9))
    if kind == 5:
        return (r <= 0.95) & (r >= 0.55)
    if kind == 6:
        return np.maximum(au * np.sqrt(3.0) / 2 + av / 2, av) <= 0.8
    if kind == 7:  # the heart curve (x² + y² − 1)³ ≤ x² y³
        x, y = 1.25 * u, 1.25 * v + 0.25
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if kind == 8:
        return (r <= 0.9) & (np.hypot(u - 0.45, v) > 0.7)
    if kind == 9:
        shaft = (av <= 0.2) & (u >= -0.9) & (u <= 0.15)
        return shaft | ((u >= 0.05) & (av <= 0.85 * (0.95 - u)))
    raise ValueError(f"no object kind {kind}")


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """``(size, size, 3)`` in [0, 1]: a gradient, stripes, a checkerboard or smooth noise in random colours."""
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    angle = rng.uniform(0, 2 * np.pi)
    along = np.cos(angle) * x + np.sin(angle) * y
    style = rng.integers(4)
    if style == 0:
        t = (along - along.min()) / (np.ptp(along) + 1e-9)
    elif style == 1:
        t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * along + rng.uniform(0, 2 * np.pi))
    elif style == 2:
        cells = rng.integers(2, 6)
        t = ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(np.float64)
    else:
        coarse = rng.uniform(0, 1, (4, 4))
        t = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1)))[:size, :size]
        t = _smooth(t, max(size // 8, 1))
    return a + (b - a) * t[..., None]


def _smooth(t: np.ndarray, width: int) -> np.ndarray:
    """A separable box blur of ``width`` pixels each side (edges clamped)."""
    for axis in (0, 1):
        padded = np.pad(t, [(width, width) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        cumulative = np.cumsum(padded, axis=axis)
        cumulative = np.insert(cumulative, 0, 0, axis=axis)
        span = 2 * width + 1
        t = (np.take(cumulative, np.arange(span, span + t.shape[axis]), axis=axis)
             - np.take(cumulative, np.arange(0, t.shape[axis]), axis=axis)) / span
    return t


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def make_object(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of object ``kind``, every other choice drawn from ``rng``."""
    background = _background(size, rng)
    radius = rng.uniform(0.22, 0.4) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    angle = rng.uniform(0, 2 * np.pi)
    base = _luminance(background).mean()
    for _ in range(8):  # a colour that stands out from the background
        colour = rng.uniform(0, 1, 3)
        if abs(_luminance(colour) - base) >= 0.25:
            break
    n = size * SUPERSAMPLING
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / SUPERSAMPLING
    dy, dx = (y - cy) / radius, (x - cx) / radius
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    inside = object_mask(kind, u, -v).astype(np.float64)  # -v: image rows grow downwards
    coverage = inside.reshape(size, SUPERSAMPLING, size, SUPERSAMPLING).mean(axis=(1, 3))[..., None]
    image = background * (1 - coverage) + colour * coverage
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def make_objects(n: int, size: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, 3, size, size)`` uint8 and their labels; image i is drawn from (seed, stream, i)
    alone and its class is i mod 10, so every class has the same number of images (±1)."""
    labels = np.arange(n) % len(CLASS_NAMES)
    images = np.stack([make_object(int(labels[i]), size, np.random.default_rng([seed, stream, i]))
                       for i in range(n)])
    return images.transpose(0, 3, 1, 2), labels


@DATASETS.register("objects", ObjectsConfig)
def objects(config: ObjectsConfig, split: str) -> ImageDataset:
    """Ten labelled kinds of objects in random colours, sizes, positions and rotations on textured or
    gradient backgrounds, generated (no download); colour, 32² by default."""
    training = split == "train"
    images, labels = make_objects(config.num_train if training else config.num_test, config.image_size,
                                  config.seed, 0 if training else 1)
    return ImageDataset(images, labels, CLASS_NAMES, name=f"objects/{split}")
