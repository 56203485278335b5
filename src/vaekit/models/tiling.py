"""Tiled encoding and decoding of images larger than memory allows, without tone shifts between tiles.

Tiles overlap and are blended with linear ramps. The difficulty is GroupNorm: normalised per tile (as
diffusers' ``enable_tiling`` does), every tile gets its own mean and variance and the tiles' tones
drift apart. Here every tile is normalised with the same, image-wide statistics, obtained in one of two
ways (``statistics=``):

- ``"preview"`` (default): one untiled pass over a downscaled copy of the input (its longer side at
  most one tile) measures every GroupNorm's mean and variance; the full-size tiles are then run once
  with those. The preview costs one tile's worth of compute, so tiled decoding costs little more per
  pixel than untiled decoding.
- ``"measured"``: the tiles are first run to measure each GroupNorm's statistics over the whole image
  at full size — every tile contributes the sums of its own share of the image (a partition, so no
  pixel counts twice) — and then run again with them; ``refinements`` repeats the measuring pass, each
  time normalising with the previous estimate. Closest to untiled, 2 + refinements times the compute.

``"tile"`` normalises each tile on its own, as diffusers does (one pass, visible tone shifts).
Tiles are spread evenly over the image, at most ``tile`` long and overlapping by at least ``overlap``.
Self-attention (the mid block's) sees one tile at a time.

Peak memory is that of one tile's activations plus the output, whatever the image's size.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.errors import VaekitError
from vaekit.models.fastconv import to_channels_last
from vaekit.models.norm import SHARED_NORM, GroupNorm
from vaekit.moments import Moments


def tile_layout(size: int, tile: int, overlap: int, multiple: int = 1) -> tuple[list[int], int]:
    """(starts, length) of the fewest tiles of at most ``tile`` covering ``size`` with neighbours sharing
    at least ``overlap``; spread evenly, so the tiles are as short as the count allows (less overlap
    computed twice). Starts and length are multiples of ``multiple`` (``size`` must be one)."""
    if size <= tile:
        return [0], size
    count = math.ceil((size - overlap) / (tile - overlap))
    while True:  # more tiles only when rounding to multiples ate into an overlap
        length = min(size, -(-math.ceil((size + (count - 1) * overlap) / count) // multiple) * multiple)
        starts = [(i * (size - length) // (count - 1)) // multiple * multiple for i in range(count)]
        if all(length - (b - a) >= overlap for a, b in zip(starts, starts[1:])):
            return starts, length
        count += 1


def _ramp(length: int, overlap_before: int, overlap_after: int, device, dtype) -> torch.Tensor:
    """Blend weights along one axis of a tile: rising over the overlap with the previous tile, falling
    over the overlap with the next, 1 elsewhere (never 0, so every pixel is covered)."""
    position = torch.arange(length, device=device, dtype=dtype) + 0.5
    weight = torch.ones(length, device=device, dtype=dtype)
    if overlap_before:
        weight = torch.minimum(weight, position / overlap_before)
    if overlap_after:
        weight = torch.minimum(weight, (length - position) / overlap_after)
    return weight.clamp_min(1e-3)


@dataclass
class _Tile:
    top: int
    left: int
    height: int
    width: int
    core: tuple[float, float, float, float]
    """(top, bottom, left, right) of this tile's share of the image, as fractions of the tile."""


def _tiles(height: int, width: int, tile: int, overlap: int, multiple: int) -> list[_Tile]:
    (rows, th), (cols, tw) = tile_layout(height, tile, overlap, multiple), tile_layout(width, tile, overlap, multiple)

    def shares(starts: list[int], size: int, length: int) -> list[tuple[float, float]]:
        # Each position belongs to the tile whose centre is nearest: a partition of the image.
        bounds = [0] + [(a + length + b) // 2 for a, b in zip(starts[:-1], starts[1:])] + [size]
        return [((lo - s) / length, (hi - s) / length) for s, lo, hi in zip(starts, bounds[:-1], bounds[1:])]

    row_shares, col_shares = shares(rows, height, th), shares(cols, width, tw)
    return [_Tile(r, c, th, tw, (*rs, *cs)) for r, rs in zip(rows, row_shares) for c, cs in zip(cols, col_shares)]


class _GroupStats(Moments):
    """Per (batch element, group) sums over the image of one GroupNorm's input."""

    def add_groups(self, x: torch.Tensor, groups: int) -> None:
        self.add(x.reshape(x.shape[0], groups, -1))

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(), self.variance()


def _group_moments(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (batch element, group) mean and (biased) variance of ``x`` (B, C, H, W), returned in float64.
    Computed in x's precision (torch's reductions are Welford/pairwise: ~1e-7 relative in float32), so
    the preview allocates nothing of activation size."""
    b, c = x.shape[:2]
    var, mean = torch.var_mean(x.view(b, groups, c // groups, *x.shape[2:]), dim=(2, 3, 4), correction=0)
    return mean.double(), var.double()


@dataclass
class _SharedNorm:
    """The state of the GroupNorm replacement during one tiled pass."""

    using: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    collecting: dict[nn.GroupNorm, _GroupStats] | None = None
    tile: _Tile | None = None
    """The tile whose share is collected; None collects the whole input (the preview)."""

    def forward(self, module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if self.collecting is not None:
            if self.tile is None:
                self.collecting[module] = _group_moments(x, module.num_groups)
            else:
                top, bottom, left, right = self.tile.core
                h, w = x.shape[2:]
                share = x[:, :, round(top * h):round(bottom * h), round(left * w):round(right * w)]
                self.collecting.setdefault(module, _GroupStats()).add_groups(share, module.num_groups)
        if module not in self.using:
            return F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)
        # Fixed statistics: one per-channel scale and shift (keeps x's memory layout).
        mean, var = self.using[module]
        b, c = x.shape[:2]
        per_group = c // module.num_groups
        scale = torch.rsqrt(var + module.eps).repeat_interleave(per_group, dim=1)
        shift = -mean.repeat_interleave(per_group, dim=1) * scale
        if module.affine:
            scale, shift = scale * module.weight.double(), shift * module.weight.double() + module.bias.double()
        return torch.addcmul(shift.to(x.dtype).view(b, c, 1, 1), x, scale.to(x.dtype).view(b, c, 1, 1))


@contextmanager
def _shared_group_norm(model: nn.Module, state: _SharedNorm) -> Iterator[None]:
    plain = [type(m).__name__ for m in model.modules() if isinstance(m, nn.GroupNorm) and not isinstance(m, GroupNorm)]
    if plain:
        raise VaekitError(f"tiling needs the model's GroupNorms to be vaekit.models.norm.GroupNorm; "
                          f"{len(plain)} are plain {plain[0]}")
    token = SHARED_NORM.set(state)
    try:
        yield
    finally:
        SHARED_NORM.reset(token)


STATISTICS = ("preview", "measured", "tile")


def _preview(source: torch.Tensor, tile: int, multiple: int, mode: str) -> torch.Tensor:
    """``source`` shrunk by the smallest integer factor that fits it in one tile (sides kept multiples)."""
    factor = math.ceil(max(source.shape[2:]) / tile)
    size = [max(multiple, round(side / factor / multiple) * multiple) for side in source.shape[2:]]
    return F.interpolate(source, size=size, mode=mode)


def _run_tiled(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor, tile: int,
               overlap: int, scale: float, refinements: int, statistics: str, multiple: int = 1,
               preview_mode: str = "nearest-exact") -> torch.Tensor:
    """Apply ``run`` to overlapping tiles of ``source`` ``(B, C, H, W)`` (tile and overlap in source
    pixels, multiples of ``multiple``); ``run`` maps an (h, w) tile to (h·scale, w·scale). Returns the
    blended full output."""
    if statistics not in STATISTICS:
        raise VaekitError(f"statistics must be one of {', '.join(STATISTICS)}, not {statistics!r}")
    b, _, height, width = source.shape
    tiles = _tiles(height, width, tile, overlap, multiple)
    state = _SharedNorm()
    with _shared_group_norm(model, state), torch.no_grad():
        if len(tiles) > 1 and statistics == "preview":
            state.collecting = {}
            run(_preview(source, tile, multiple, preview_mode))
            state.using, state.collecting = state.collecting, None
        elif len(tiles) > 1 and statistics == "measured":
            for _ in range(1 + refinements):  # measuring passes: image-wide GroupNorm statistics
                state.collecting = {}
                for t in tiles:
                    state.tile = t
                    run(source[:, :, t.top:t.top + t.height, t.left:t.left + t.width])
                state.using = {m: s.moments() for m, s in state.collecting.items()}
            state.collecting = None
        output = weight_sum = None
        rows = sorted({t.top for t in tiles})
        cols = sorted({t.left for t in tiles})
        for t in tiles:
            out = run(source[:, :, t.top:t.top + t.height, t.left:t.left + t.width])
            if output is None:
                output = torch.zeros((b, out.shape[1], round(height * scale), round(width * scale)),
                                     dtype=out.dtype, device=out.device)
                weight_sum = torch.zeros((1, 1, *output.shape[2:]), dtype=out.dtype, device=out.device)
            r, c = rows.index(t.top), cols.index(t.left)
            before_h = (rows[r - 1] + t.height - t.top) if r > 0 else 0
            after_h = (t.top + t.height - rows[r + 1]) if r + 1 < len(rows) else 0
            before_w = (cols[c - 1] + t.width - t.left) if c > 0 else 0
            after_w = (t.left + t.width - cols[c + 1]) if c + 1 < len(cols) else 0
            oh, ow = out.shape[2:]
            weight = (_ramp(oh, round(before_h * scale), round(after_h * scale), out.device, out.dtype)[:, None]
                      * _ramp(ow, round(before_w * scale), round(after_w * scale), out.device, out.dtype)[None, :])
            top, left = round(t.top * scale), round(t.left * scale)
            output[:, :, top:top + oh, left:left + ow] += out * weight
            weight_sum[:, :, top:top + oh, left:left + ow] += weight
    return output / weight_sum


def _check(tile: int, overlap: int, f: int, what: str) -> None:
    if tile % f or overlap % f or tile <= 0:
        raise VaekitError(f"{what}: tile size {tile} and overlap {overlap} must be positive multiples of f = {f}")
    if not 0 <= overlap < tile:
        raise VaekitError(f"{what}: the overlap ({overlap}) must be smaller than the tile ({tile})")


def tiled_encode(model, x: torch.Tensor, tile: int = 512, overlap: int = 32, refinements: int = 1,
                 statistics: str = "preview"):
    """q(z|x) of an image of any size, encoded in ``tile``-pixel tiles overlapping by ``overlap`` pixels.

    ``statistics``: ``"preview"`` (image-wide GroupNorm statistics from a downscaled pass; default),
    ``"measured"`` (from 1 + ``refinements`` full-size passes), ``"tile"`` (per tile, as diffusers).
    """
    f = model.downsampling_factor
    _check(tile, overlap, f, "tiled encode")
    model._check_input(x)
    padded = model.pad_to_multiple(x)

    def run(t: torch.Tensor) -> torch.Tensor:
        moments = model.encoder(to_channels_last(t))
        return model.quant_conv(moments) if model.quant_conv is not None else moments

    moments = _run_tiled(model, run, padded, tile, overlap, 1 / f, refinements, statistics, multiple=f,
                         preview_mode="area")
    return model.posterior_from(moments)


def tiled_decode(model, z: torch.Tensor, tile: int = 512, overlap: int = 32, refinements: int = 1,
                 size: tuple[int, int] | None = None, statistics: str = "preview") -> torch.Tensor:
    """Images from latents ``(B, c, h, w)``, decoded in tiles of ``tile`` output pixels overlapping by
    ``overlap`` output pixels; cropped to ``size`` = (H, W) when given. ``statistics``: as in
    ``tiled_encode``."""
    f = model.downsampling_factor
    _check(tile, overlap, f, "tiled decode")
    z = model.decoder_input(z)  # a VQ model's nearest codes: per position, so before the tiling

    def run(t: torch.Tensor) -> torch.Tensor:
        return model.decoder(to_channels_last(model.post_quant_conv(t) if model.post_quant_conv is not None else t))

    images = _run_tiled(model, run, z, tile // f, overlap // f, f, refinements, statistics)
    return images if size is None else images[:, :, : size[0], : size[1]]
