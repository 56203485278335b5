"""Faster CPU inference for convolutional autoencoders: Winograd 3×3 convolutions and channels-last.

On a CPU, diffusers' ``AutoencoderKL`` spends ~90 % of its time in oneDNN's 3×3 convolutions, which
already run at the machine's sgemm rate; what is left to win is arithmetic. Winograd's minimal
filtering algorithm F(m×m, 3×3) computes an m×m output tile from an (m+2)×(m+2) input tile with
(m+2)² instead of 9m² multiplications per channel pair: 2.25× fewer for m = 2, 4× fewer for m = 4.
Here the transforms are small matrix products on gathered tiles and the channel mixing is one batched
matrix product per tile position, worked through in row chunks that stay in cache.

Accuracy: the transforms are exact in exact arithmetic; in float32 the error of F(4×4) per layer is a
few times that of a direct convolution (the transform matrices have entries up to 5), which the
decoder's outputs keep within 1e-4 of diffusers' (measured in ``tests/test_fastconv.py`` and
``benchmarks/encode_decode.py``). F(2×2) is as accurate as a direct convolution.

Which path is fastest depends on the CPU: on one AMD EPYC with AVX-512, F(4×4) was slower than oneDNN's
direct convolution on channels-last tensors, where on Intel machines it was 1.4–1.5× faster. So by
default each Winograd-eligible layer shape class is timed on first use (``Autotuner``: every path of
``conv_paths`` on the layer's actual input, a warm-up and a median of 3) and the fastest kept, per
machine, in vaekit's cache folder. Pin one path instead with ``VAEKIT_FAST_CPU_PATH`` (``winograd4``,
``winograd2``, ``channels-last``, ``plain``; ``auto`` tunes), ``VAEKIT_FAST_CPU_AUTOTUNE=0`` (the fixed
settings below), or ``fast_paths(path="winograd2")``; any path setting given to ``fast_paths`` (e.g.
``fast_paths(winograd_tile=2)``) pins it for that block.

The fast paths apply to inference only (no autograd, CPU, float32): training, GPUs and other dtypes run
the ordinary convolution. Switch them off with ``settings.enabled = False``, the context manager
``fast_paths(False)``, or the environment variable ``VAEKIT_FAST_CPU=0``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import weakref
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaekit.models.autotune import Autotuner


@dataclass
class FastPathSettings:
    enabled: bool = True
    """Master switch for the CPU inference fast paths below (``VAEKIT_FAST_CPU=0``: off)."""
    winograd: bool = True
    """3×3 stride-1 convolutions by Winograd's algorithm."""
    winograd_tile: int = 4
    """Output tile side m of F(m×m, 3×3): 4 (fastest) or 2 (as accurate as a direct convolution)."""
    winograd_min_channels: int = 256
    """Convolutions with fewer input or output channels than this run directly (their matrix products are
    too small for the transforms to pay off)."""
    channels_last: bool = True
    """Run the networks on NHWC tensors (no layout reorders around oneDNN's convolutions)."""
    autotune: bool = True
    """Time the paths of ``conv_paths`` for each Winograd-eligible layer shape class on first use and run
    the fastest (cached per machine on disk: ``autotuner``); off: Winograd F(``winograd_tile``) always."""
    chunk_elements: int = 1 << 21
    """Transformed tiles worked through per step (float32 elements; 8 MB keeps them in cache)."""
    winograd_cache_mb: float = 0.0
    """Transformed filters kept between calls, all layers together, first come first kept. Off by
    default: F(4×4) filters are 4× a layer's weights (Stable Diffusion's decoder: 720 MiB, its encoder
    another 300) and transforming them per call costs 2–8 ms per 512-channel layer: 4–9 % of a 256²
    encode + decode, ~1 % of a 512² decode (ablation in ``benchmarks/encode_decode.py``)."""


PATHS = ("plain", "channels-last", "winograd2", "winograd4")
"""The ways a Winograd-eligible 3×3 convolution can run, reference first: oneDNN's direct convolution on
NCHW tensors (the plain path's), on the network's channels-last tensors, and Winograd F(2×2) and F(4×4)."""
PATH_SETTINGS = ("winograd", "winograd_tile", "winograd_min_channels", "channels_last")
"""Settings that choose paths: giving one to ``fast_paths`` pins the paths (no autotuning) in its block."""


def path_overrides(path: str) -> dict:
    """The settings that pin one of ``PATHS`` for every layer (``"auto"``: autotune)."""
    table = {"auto": {"enabled": True, "autotune": True},
             "plain": {"enabled": False},
             "channels-last": {"enabled": True, "autotune": False, "winograd": False, "channels_last": True},
             "winograd2": {"enabled": True, "autotune": False, "winograd": True, "winograd_tile": 2},
             "winograd4": {"enabled": True, "autotune": False, "winograd": True, "winograd_tile": 4}}
    if path not in table:
        raise ValueError(f"unknown fast CPU path {path!r}; known: {', '.join(table)}")
    return table[path]


def settings_from(environ) -> FastPathSettings:
    """The settings an environment asks for: ``VAEKIT_FAST_CPU=0`` (all off), ``VAEKIT_FAST_CPU_AUTOTUNE=0``
    (the fixed Winograd F(4×4) path), ``VAEKIT_FAST_CPU_PATH`` (one of ``path_overrides``' names)."""
    chosen = FastPathSettings(autotune=environ.get("VAEKIT_FAST_CPU_AUTOTUNE", "1") != "0")
    if environ.get("VAEKIT_FAST_CPU_PATH"):
        chosen.__dict__.update(path_overrides(environ["VAEKIT_FAST_CPU_PATH"]))
    if environ.get("VAEKIT_FAST_CPU", "1") == "0":
        chosen.enabled = False
    return chosen


settings = settings_from(os.environ)
autotuner = Autotuner()
"""Where the timed choices come from (and go: ``autotuner.cache_file()``); ``autotuner.used`` lists the
choices made since it was last cleared."""


@contextlib.contextmanager
def fast_paths(enabled: bool = True, path: str | None = None, **overrides):
    """Temporarily switch the fast paths on/off, pin one path for every layer (``fast_paths(path="winograd2")``,
    names as ``path_overrides``) or change settings (``fast_paths(winograd_tile=2)``). A path setting
    (``PATH_SETTINGS``) given without ``autotune=True`` switches autotuning off in the block."""
    saved = dict(settings.__dict__)
    settings.enabled = enabled
    if path is not None:
        overrides = {**path_overrides(path), **overrides}
    if "autotune" not in overrides and any(key in overrides for key in PATH_SETTINGS):
        overrides["autotune"] = False
    for key, value in overrides.items():
        if not hasattr(settings, key):
            raise AttributeError(f"unknown fast-path setting {key!r}; known: {', '.join(saved)}")
        setattr(settings, key, value)
    try:
        yield settings
    finally:
        settings.__dict__.update(saved)


def cpu_inference(x: torch.Tensor) -> bool:
    """Whether the fast paths apply to this input: enabled, no autograd, CPU, float32."""
    return (settings.enabled and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in NHWC memory order when the channels-last fast path applies (CPU float32 inference, or
    bf16/fp16 on a GPU, where cuDNN's tensor-core kernels want NHWC), else ``x``."""
    gpu_half = x.device.type == "cuda" and x.dtype in (torch.float16, torch.bfloat16)
    if settings.channels_last and (cpu_inference(x) or (settings.enabled and gpu_half)):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def gpu_inference(model: nn.Module, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cuda",
                  compile: bool = False) -> nn.Module:
    """A copy of ``model`` for GPU inference: weights in ``dtype`` and channels-last (NHWC activations
    and filters: cuDNN's fastest bf16/fp16 convolutions, no layout transposes), optionally
    ``torch.compile``-d (fuses GroupNorm + SiLU; compiles on first use). float16 outputs that overflow
    (as SDXL's VAE does) are recomputed in float32 by the model itself."""
    import copy

    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"GPU inference runs in float16, bfloat16 or float32, not {dtype}")
    fast = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    fast = fast.to(memory_format=torch.channels_last)
    if compile:
        fast.encoder = torch.compile(fast.encoder)
        fast.decoder = torch.compile(fast.decoder)
    return fast


@lru_cache(maxsize=None)
def winograd_matrices(m: int, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Bᵀ, G, Aᵀ) of F(m, r) by the Cook–Toom construction (Lavin & Gray 2016), interpolation points
    0, ±1, ±2, ±½ … and infinity. Bᵀ is solved from the defining identity, so any points work."""
    n = m + r - 1
    candidates = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0]
    if n - 1 > len(candidates):
        raise ValueError(f"F({m},{r}) needs more interpolation points than are defined")
    points = np.array(candidates[: n - 1])
    At = np.zeros((m, n))
    At[:, : n - 1] = points[None, :] ** np.arange(m)[:, None]
    At[m - 1, n - 1] = 1.0
    G = np.zeros((n, r))
    for j in range(n - 1):
        G[j] = points[j] ** np.arange(r) / np.prod([points[j] - points[i] for i in range(n - 1) if i != j])
    G[n - 1, r - 1] = 1.0
    # Σ_j Aᵀ[i,j] G[j,k] Bᵀ[j,l] = [l = i + k] for every output i, filter tap k and input l.
    system = np.zeros((m * r * n, n * n))
    target = np.zeros(m * r * n)
    row = 0
    for i in range(m):
        for k in range(r):
            for col in range(n):
                system[row].reshape(n, n)[:, col] = At[i] * G[:, k]
                target[row] = float(col == i + k)
                row += 1
    solution = np.linalg.lstsq(system, target, rcond=None)[0]
    if np.abs(system @ solution - target).max() > 1e-9:
        raise ArithmeticError(f"no Winograd input transform for F({m},{r}) with these points")
    return solution.reshape(n, n), G, At


def winograd_filter(weight: torch.Tensor, m: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """(Cout, Cin, 3, 3) filters -> U = G g Gᵀ laid out (a², Cin, Cout), a = m + 2; written into ``out``
    (any tensor with enough elements) when given."""
    co, ci = weight.shape[:2]
    # One (a², 9) @ (9, Cin·Cout) product: vec(G g Gᵀ) = (G ⊗ G) vec(g), straight into the layout used.
    taps = weight.detach().permute(2, 3, 1, 0).reshape(9, ci * co)
    kg = _transform(m, "G").to(weight.dtype)
    if out is None:
        return torch.mm(kg, taps).view(-1, ci, co)
    u = out.view(-1)[: kg.shape[0] * ci * co].view(kg.shape[0], ci * co)
    return torch.mm(kg, taps, out=u).view(-1, ci, co)


@lru_cache(maxsize=None)
def _transform(m: int, which: str) -> torch.Tensor:
    """Bᵀ ⊗ Bᵀ (``which="B"``), G ⊗ G (``"G"``) or Aᵀ ⊗ Aᵀ (``"A"``): the 2-D input, filter or output
    transform as one matrix."""
    Bt, G, At = winograd_matrices(m)
    matrix = {"B": Bt, "G": G, "A": At}[which]
    return torch.from_numpy(np.kron(matrix, matrix)).float()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, m: int,
                     chunk_elements: int | None = None, upsample: int = 1) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=1)`` for 3×3 filters ``w`` given as ``u = winograd_filter(w, m)``;
    with ``upsample`` = s, the convolution of x's nearest-neighbour enlargement by s (as
    ``F.interpolate(x, scale_factor=s)``), enlarged a row chunk at a time instead of as a whole.

    x: (B, Cin, H, W) float32 (channels-last avoids one copy) -> (B, Cout, sH, sW) in channels-last order.
    """
    b, c = x.shape[:2]
    h, w = x.shape[2] * upsample, x.shape[3] * upsample
    a = m + 2
    co = u.shape[-1]
    tiles_h, tiles_w = math.ceil(h / m), math.ceil(w / m)
    rows = x.permute(0, 2, 3, 1)  # (B, H, W, C): a view of channels-last input
    out = x.new_empty(b, tiles_h, m, tiles_w, m, co)
    kb, ka = _transform(m, "B"), _transform(m, "A")
    budget = chunk_elements or settings.chunk_elements
    rows_per_chunk = max(1, budget // (a * a * b * tiles_w * max(c, co)))
    for r0 in range(0, tiles_h, rows_per_chunk):
        r1 = min(tiles_h, r0 + rows_per_chunk)
        tiles = b * (r1 - r0) * tiles_w
        # The input rows these tiles read, zero-padded by one (and up to whole tiles) only here: padding the
        # whole input would copy it.
        top, bottom = r0 * m - 1, r1 * m + 1
        lo, hi = max(top, 0), min(bottom, h)
        if upsample == 1:
            band = rows[:, lo:hi]
        else:
            s = upsample
            source = rows[:, lo // s:(hi + s - 1) // s]
            band = (source[:, :, None, :, None].expand(b, source.shape[1], s, source.shape[2], s, c)
                    .reshape(b, source.shape[1] * s, w, c)[:, lo % s:lo % s + hi - lo])
        piece = F.pad(band, (0, 0, 1, tiles_w * m + 1 - w, max(0, -top), max(0, bottom - h)))
        # (a, a, B, rows, tiles_w, C) gathered from overlapping windows, then Bᵀ d B for all of them at once.
        d = piece.unfold(1, a, m).unfold(2, a, m).permute(4, 5, 0, 1, 2, 3)
        v = torch.mm(kb, d.reshape(a * a, tiles * c)).view(a * a, tiles, c)
        products = torch.bmm(v, u)  # (a², tiles, Cout): the channel mixing, one matrix product per position
        y = torch.mm(ka, products.view(a * a, tiles * co)).view(m, m, b, r1 - r0, tiles_w, co)
        out[:, r0:r1].copy_(y.permute(2, 3, 0, 4, 1, 5))
    result = out.view(b, tiles_h * m, tiles_w * m, co)[:, :h, :w]
    if bias is not None:
        result = result.add_(bias) if result.is_contiguous() else result + bias
    return result.permute(0, 3, 1, 2)


class _FilterCache:
    """Transformed filters of all layers, kept while ``settings.winograd_cache_mb`` has room when they
    are first made: entries live as long as their layer (or until ``clear()``) and are replaced when its
    weights change; layers that do not fit get theirs computed into a per-thread scratch buffer (reused:
    a fresh buffer of this size costs page faults on every call)."""

    def __init__(self):
        self.entries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()
        self.scratch = threading.local()

    def clear(self) -> None:
        """Drop every kept filter (lowering ``winograd_cache_mb`` only stops new ones being kept)."""
        with self.lock:
            self.entries.clear()

    def nbytes(self) -> int:
        with self.lock:
            return self._used()

    def _used(self) -> int:
        return sum(u.numel() * u.element_size() for _, u in self.entries.values())

    def get(self, conv: nn.Conv2d, m: int) -> torch.Tensor:
        key = (conv.weight.data_ptr(), conv.weight._version, m)
        size = (m + 2) ** 2 * conv.in_channels * conv.out_channels * conv.weight.element_size()
        with self.lock:
            entry = self.entries.get(conv)
            if entry is not None and entry[0] == key:
                return entry[1]
            self.entries.pop(conv, None)  # stale (the weights changed): not counted against the budget
            if self._used() + size <= settings.winograd_cache_mb * 2**20:
                u = winograd_filter(conv.weight, m)
                self.entries[conv] = (key, u)
                return u
        buffer = getattr(self.scratch, "buffer", None)
        if buffer is None or buffer.numel() * buffer.element_size() < size or buffer.dtype != conv.weight.dtype:
            with torch.inference_mode(False):  # an ordinary tensor: writable in and out of inference mode
                buffer = self.scratch.buffer = torch.empty(size // conv.weight.element_size(), dtype=conv.weight.dtype)
        return winograd_filter(conv.weight, m, out=buffer)


filter_cache = _FilterCache()


@lru_cache(maxsize=None)
def rounding_bound(m: int) -> float:
    """κ·u for F(m×m, 3×3): float32's unit roundoff u = 2⁻²⁴ times κ = (‖Bᵀ‖₂ ‖G‖₂ ‖Aᵀ‖₂)², the most the
    transforms can amplify one rounding error (≈ 7.8e-4 for m = 4, 1.2e-6 for m = 2)."""
    bt, g, at = winograd_matrices(m)
    return float((np.linalg.norm(bt, 2) * np.linalg.norm(g, 2) * np.linalg.norm(at, 2)) ** 2 * 2.0 ** -24)


def tuning_tolerance() -> float:
    """How far a candidate's output may be from the plain path's while being timed: F(4×4)'s worst-case
    rounding (``rounding_bound(4)``), relative to the output's scale. Every path's rounding on trained
    filters stays under 5e-5 of it (tests), so a candidate beyond this is broken, not rounded."""
    return rounding_bound(4)


def layout(x: torch.Tensor) -> str:
    """"channels-last" for NHWC memory order (and not also NCHW), else "nchw"."""
    return "channels-last" if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else "nchw"


def conv_paths(x: torch.Tensor) -> tuple[str, ...]:
    """The ``PATHS`` that differ for this input: "channels-last" only when ``x`` is laid out so."""
    return PATHS if layout(x) == "channels-last" else tuple(p for p in PATHS if p != "channels-last")


def shape_key(conv: nn.Conv2d, x: torch.Tensor, upsample: int = 1) -> str:
    """The shape class a timed choice holds for: channels, enlargement, layout, and the number of output
    positions B·H·W to within a factor √2 (so images of nearby sizes share one timing)."""
    positions = x.shape[0] * x.shape[2] * x.shape[3] * upsample ** 2
    size_class = round(2 * math.log2(max(positions, 1))) / 2
    return (f"conv3x3 {conv.in_channels}>{conv.out_channels} upsample={upsample} {layout(x)} "
            f"positions~2^{size_class:g}")


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) that, during CPU float32 inference when ``settings``
    allow, runs 3×3 stride-1 padding-1 convolutions by the fastest of ``PATHS`` for its shape on this
    machine (``settings.autotune``) or by Winograd F(``settings.winograd_tile``); otherwise exactly
    ``nn.Conv2d``. The filters are transformed on every call, or kept between calls within
    ``settings.winograd_cache_mb`` (and transformed again when the weights change)."""

    def _winograd_applies(self, x: torch.Tensor) -> bool:
        return (settings.winograd and cpu_inference(x) and self.kernel_size == (3, 3) and self.stride == (1, 1)
                and self.padding == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros" and self.weight.dtype == torch.float32
                and min(self.in_channels, self.out_channels) >= settings.winograd_min_channels)

    def winograd_weight(self, m: int) -> torch.Tensor:
        return filter_cache.get(self, m)

    def forward(self, x: torch.Tensor, upsample: int = 1) -> torch.Tensor:
        """The convolution of ``x``, or with ``upsample`` = s of its nearest-neighbour enlargement by s
        (the Winograd path enlarges it a few rows at a time: the enlarged tensor is never stored)."""
        if self._winograd_applies(x):
            return self.run_path(self.choose_path(x, upsample), x, upsample)
        if upsample != 1:
            x = F.interpolate(x, scale_factor=float(upsample), mode="nearest")
        return super().forward(x)

    def choose_path(self, x: torch.Tensor, upsample: int = 1) -> str:
        """The path this call takes: the autotuner's choice for its shape class, or the pinned tile."""
        if not settings.autotune:
            return f"winograd{settings.winograd_tile}"
        candidates = {path: functools.partial(self.run_path, path, x, upsample) for path in conv_paths(x)}
        return autotuner.choose(shape_key(self, x, upsample), candidates, tuning_tolerance())

    def run_path(self, path: str, x: torch.Tensor, upsample: int = 1) -> torch.Tensor:
        """This convolution of ``x`` (enlarged by ``upsample``) by one of ``PATHS``; the output is laid out
        as the input is ("plain" computes on an NCHW copy of a channels-last input and lays it back)."""
        if path.startswith("winograd"):
            m = int(path[len("winograd"):])
            return winograd_conv3x3(x, self.winograd_weight(m), self.bias, m, upsample=upsample)
        if path not in PATHS:
            raise ValueError(f"unknown convolution path {path!r}; known: {', '.join(PATHS)}")
        source = x.contiguous() if path == "plain" else x
        if upsample != 1:
            source = F.interpolate(source, scale_factor=float(upsample), mode="nearest")
        out = super().forward(source)
        if path == "plain" and layout(x) == "channels-last":
            return out.contiguous(memory_format=torch.channels_last)
        return out
