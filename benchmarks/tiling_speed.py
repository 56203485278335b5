"""Large images: tiled decoding of a 2048×2048 image and tiled encoding of a 2048×2048 photo, vaekit
against diffusers' ``enable_tiling``, Stable Diffusion's config (seeded random weights; for tiled-vs-
untiled accuracy on a trained model see ``tiling_quality.py``).

Each case runs in its own fresh process (so its peak resident memory is its own), cases alternating
vaekit / diffusers: the process first times the untiled operation at 512×512 (the per-megapixel
reference, median of ``--reference-rounds``) after the tiled operation at 2048×2048 (once, first, so
the peak RSS read after it is the tiled run's, model weights included), and reports seconds per
megapixel of both and their ratio.
Tile size is the same for both libraries (512 px; vaekit overlaps 32 px, diffusers its default 25 %).

    python benchmarks/tiling_speed.py [--size 2048] [--tile 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

import vaekit
from vaekit.models.fastconv import fast_paths

from common import current_rss_mb, machine, median, peak_rss_mb, sd_pair, seconds, write_json

CASES = ["vaekit decode", "diffusers decode", "vaekit encode", "diffusers encode"]


def photo(size: int) -> torch.Tensor:
    from skimage import data

    x = torch.tensor(np.ascontiguousarray(data.astronaut())).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def run_case(case: str, size: int, tile: int, reference_rounds: int, winograd: bool = True) -> dict:
    from vaekit.models.tiling import tiled_decode, tiled_encode

    library, operation = case.split()
    if library == "diffusers":  # only the model being measured is built in this process
        model, twin = sd_pair()
        f = model.downsampling_factor
        del model
    else:
        torch.manual_seed(0)
        model, twin = vaekit.create_model("kl-f8").eval(), None  # sd_pair's weights, without diffusers
        f = model.downsampling_factor
    gc.collect()
    baseline = current_rss_mb()
    torch.manual_seed(0)
    if operation == "decode":
        small, large = torch.randn(1, 4, 512 // f, 512 // f), torch.randn(1, 4, size // f, size // f)
    else:
        small, large = photo(512), photo(size)
    if library == "diffusers":
        twin.enable_tiling()
        twin.tile_sample_min_size = tile
        twin.tile_latent_min_size = tile // f
        untiled = (lambda x: twin.decode(x).sample) if operation == "decode" else (lambda x: twin.encode(x).latent_dist.mean)
        tiled = untiled  # enable_tiling switches to tiles above the tile size
    else:
        untiled = model.decode if operation == "decode" else (lambda x: model.encode(x).mean)
        tiled = ((lambda z: tiled_decode(model, z, tile)) if operation == "decode"
                 else (lambda x: tiled_encode(model, x, tile).mean))
    with torch.inference_mode(), fast_paths(winograd=winograd):
        # The tiled run first, so that the peak resident memory read after it is its own (the untiled
        # 512² reference needs more than a tile). vaekit caches its transformed filters on first use:
        # that one-off cost is inside the tiled time.
        elapsed = seconds(lambda: tiled(large))
        peak = peak_rss_mb()
        reference = median([seconds(lambda: untiled(small)) for _ in range(reference_rounds)])
    megapixels_small, megapixels_large = (512 * 512) / 1e6, (size * size) / 1e6
    return {"case": case, "untiled 512² s": reference, "tiled s": elapsed,
            "untiled s/MP": reference / megapixels_small, "tiled s/MP": elapsed / megapixels_large,
            "tiled/untiled time per MP": (elapsed / megapixels_large) / (reference / megapixels_small),
            "peak RSS MB": peak, "RSS before MB (model and inputs loaded)": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--reference-rounds", type=int, default=3)
    parser.add_argument("--winograd-off", action="store_true",
                        help="vaekit with fast_paths(winograd=False): no cache of transformed filters")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.size, args.tile, args.reference_rounds, not args.winograd_off)))
        return
    results = []
    for case in args.cases:
        command = [sys.executable, __file__, "--case", case, "--size", str(args.size), "--tile", str(args.tile),
                   "--reference-rounds", str(args.reference_rounds)] + (["--winograd-off"] if args.winograd_off else [])
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{case:17s} untiled 512²: {r['untiled s/MP']:6.1f} s/MP   tiled {args.size}²: {r['tiled s/MP']:6.1f} s/MP "
              f"({r['tiled/untiled time per MP']:.2f}×)   peak RSS {r['peak RSS MB']:.0f} MB", flush=True)
    write_json(args.json, {"machine": machine(), "size": args.size, "tile": args.tile, "cases": results})


if __name__ == "__main__":
    main()
