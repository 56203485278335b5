"""Latent export throughput: images per second of `vaekit encode` and `vaekit export-latents` over a
folder of JPEGs (file decoding included), against the model's own encode rate on images already in
memory. Loading runs in a background thread and must hide behind the compute (goal: ≥ 90 %).

Stable Diffusion's config (kl-f8, seeded random weights) and, as a stress case where decoding a JPEG
is a noticeable fraction of encoding it, kl-f8-tiny. 256×256 JPEGs cut from scikit-image's photos.
Paths alternate within each round, one process; medians of the rounds.

    python benchmarks/export_throughput.py [--images 24] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
from pathlib import Path

import torch

import vaekit
from common import interleaved, machine, make_jpegs, median, seconds, write_json
from vaekit.cli import main as vaekit_main
from vaekit.io.images import read_image
from vaekit.latents import export_latents


def measure(preset: str, paths: list[Path], batch: int, rounds: int, work: Path) -> dict:
    torch.manual_seed(0)
    model = vaekit.create_model(preset).eval()
    model_dir = work / preset
    vaekit.save_model(model, model_dir)
    images = [read_image(p) for p in paths]
    batches = [torch.cat(images[i:i + batch]) for i in range(0, len(images), batch)]
    counter = iter(range(10 ** 6))

    def own_rate_1():
        with torch.inference_mode():
            for x in images:
                model.encode(x).mean

    def own_rate_batch():
        with torch.inference_mode():
            for x in batches:
                model.encode(x).mean

    def encode_command():
        with contextlib.redirect_stdout(io.StringIO()):
            assert vaekit_main(["-q", "encode", *map(str, paths), "--model", str(model_dir),
                                "-o", str(work / f"{preset}-{next(counter)}.safetensors")]) == 0

    def export():
        with torch.inference_mode():
            export_latents(model, str(paths[0].parent), work / f"{preset}-export-{next(counter)}",
                           batch_size=batch, shard_size=len(paths))

    paths_ = {"model encode, batch 1 (in memory)": own_rate_1, "vaekit encode (files, batch 1)": encode_command,
              f"model encode, batch {batch} (in memory)": own_rate_batch,
              f"vaekit export-latents (files, batch {batch})": export}
    times = interleaved(paths_, rounds, warmup=1)
    rates = {name: len(paths) / median(values) for name, values in times.items()}
    result = {"preset": preset, "images": len(paths), "images/s": rates}
    result["encode command / model (batch 1)"] = rates["vaekit encode (files, batch 1)"] / rates["model encode, batch 1 (in memory)"]
    result[f"export / model (batch {batch})"] = rates[f"vaekit export-latents (files, batch {batch})"] / rates[f"model encode, batch {batch} (in memory)"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=["kl-f8", "kl-f8-tiny"])
    parser.add_argument("--json")
    args = parser.parse_args()
    logging.getLogger("vaekit").setLevel(logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "jpegs").mkdir()
        paths = make_jpegs(work / "jpegs", args.images)
        jpeg_decode = median([seconds(lambda: [read_image(p) for p in paths]) for _ in range(3)]) / len(paths)
        print(f"reading + decoding one 256×256 JPEG: {jpeg_decode * 1e3:.1f} ms")
        for preset in args.presets:
            rounds = args.rounds if preset == "kl-f8" else max(args.rounds, 5)
            r = measure(preset, paths, args.batch, rounds, work)
            results.append(r)
            for name, rate in r["images/s"].items():
                print(f"  {preset:10s} {name:42s} {rate:8.2f} images/s")
            print(f"  {preset:10s} encode command / model: {r['encode command / model (batch 1)']:.1%}   "
                  f"export / model: {r[f'export / model (batch {args.batch})']:.1%}", flush=True)
    write_json(args.json, {"machine": machine(), "jpeg_read_ms": jpeg_decode * 1e3, "results": results})


if __name__ == "__main__":
    main()
