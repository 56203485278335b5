"""Helpers shared by the benchmarks: the reference model, timing, the machine's matmul rate, peak memory, and
the studies' resumable training runs."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from functools import reduce
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import vaekit


def sd_pair(preset: str = "kl-f8", seed: int = 0):
    """(vaekit model, diffusers AutoencoderKL) with the same seeded weights: Stable Diffusion's config."""
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    torch.manual_seed(seed)
    model = vaekit.create_model(preset).eval()
    c = model.config
    levels = len(c.block_out_channels)
    twin = DiffusersAutoencoderKL(
        in_channels=c.in_channels, out_channels=c.out_channels, block_out_channels=c.block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=c.layers_per_block, latent_channels=c.latent_channels, norm_num_groups=c.norm_num_groups,
        sample_size=c.sample_size).eval()
    twin.load_state_dict(model.state_dict())
    return model, twin


def make_jpegs(folder, count: int, width: int = 256, height: int = 256, seed: int = 0) -> list:
    """``count`` photographic JPEGs (quality 90) cut at random scales and positions from the colour
    photographs that ship with scikit-image and scikit-learn."""
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field(),
              *load_sample_images().images]
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        photo = Image.fromarray(photos[i % len(photos)])
        scale = max(width / photo.width, height / photo.height) * rng.uniform(1.0, 1.5)
        photo = photo.resize((max(width, round(photo.width * scale)), max(height, round(photo.height * scale))),
                             Image.Resampling.BICUBIC)
        left, top = rng.integers(0, photo.width - width + 1), rng.integers(0, photo.height - height + 1)
        path = folder / f"photo{i:05d}.jpg"
        photo.crop((left, top, left + width, top + height)).save(path, quality=90)
        paths.append(path)
    return paths


def seconds(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved(paths: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None, alternate: bool = False) -> dict[str, list[float]]:
    """Times of every path, the paths alternating within each round (so drifts hit them alike);
    ``alternate`` reverses their order every other round (A B, B A, ...), so neither always goes first."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(warmup + rounds):
        order = list(paths.items())
        for name, fn in (order[::-1] if alternate and round_ % 2 else order):
            t = seconds(fn, sync)
            if round_ >= warmup:
                times[name].append(t)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(dtype=torch.float32, device="cpu", n: int = 2048, repeats: int = 7) -> float:
    """The machine's own large-matmul rate (GFLOP/s, median of ``repeats``)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    rates = [2 * n ** 3 / seconds(lambda: a @ b, sync) / 1e9 for _ in range(repeats)]
    return median(rates)


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def current_rss_mb() -> float:
    """This process's resident memory now (MB; Linux)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {path}")


def merged(*parts: dict) -> dict:
    """Raw configs merged left to right as vaekit merges overrides (``vaekit.config.merge``)."""
    from vaekit.config import merge

    return reduce(merge, parts, {})


def run(raw: dict, name: str, runs: Path, device: str, log: dict) -> Path:
    """Train the run ``runs/name`` unless a finished one is there; one interrupted after a checkpoint goes on
    from it, to the step budget of ``raw`` (which may have been raised since). Its wall time (this process's
    share, for a resumed run) goes to ``log[name]``."""
    from vaekit.training import train

    run_dir = runs / name
    if (run_dir / "model" / "config.json").exists():
        return run_dir
    start = time.perf_counter()
    if any((run_dir / "checkpoints").glob("step-*")):
        # The study's step budget wins over the one saved with the run, so raising it extends a run.
        steps = raw.get("train", {}).get("max_steps")
        train(resume=run_dir, overrides=[f"train.max_steps={steps}"] if steps else [], device=device, explore=False)
    else:
        train(merged(raw, {"output_dir": str(runs), "run_name": name}), device=device, explore=False)
    log[name] = round(time.perf_counter() - start, 1)
    return run_dir
