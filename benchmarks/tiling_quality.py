"""How closely tiled encoding/decoding matches untiled, for vaekit and for diffusers' enable_tiling.

Random weights say nothing about tiling (they amplify every difference), so the script first trains
kl-f8-tiny briefly (seeded; about 2.5 minutes on 2 CPU cores) on 64×64 crops of photographs that ship
with scikit-image, then encodes/decodes the 512×512 astronaut untiled and tiled (tile 256 px, overlap
64 px = diffusers' overlap factor 0.25) with: vaekit (image-wide GroupNorm statistics, default), vaekit
with per-tile statistics, and diffusers' AutoencoderKL with enable_tiling on the same weights.

    python benchmarks/tiling_quality.py [--steps 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

import vaekit
from vaekit.models.tiling import tiled_decode, tiled_encode


def photos() -> list[torch.Tensor]:
    from skimage import data

    images = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()[:512, :512]]
    return [torch.tensor(np.ascontiguousarray(p)).permute(2, 0, 1).float() / 127.5 - 1 for p in images]


def train_tiny(steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = vaekit.create_model("kl-f8-tiny")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    rng = np.random.default_rng(0)
    pictures = photos()
    for _ in range(steps):
        crops = []
        for _ in range(8):
            p = pictures[rng.integers(len(pictures))]
            i, j = rng.integers(0, p.shape[1] - 64), rng.integers(0, p.shape[2] - 64)
            crops.append(p[:, i:i + 64, j:j + 64])
        x = torch.stack(crops)
        out = model(x)
        loss = (out.reconstruction - x).abs().mean() + 1e-6 * out.posterior.kl().mean() / x[0].numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4 / (a - b).pow(2).mean().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    model = train_tiny(args.steps)
    x = photos()[0][None]
    results = {}
    with torch.no_grad():
        z = model.encode(x).mean
        untiled = model.decode(z)
        results["untiled reconstruction PSNR vs the photo"] = psnr(untiled.clamp(-1, 1), x)
        for name, statistics, refinements in (("vaekit (image statistics, 1 refinement)", "image", 1),
                                              ("vaekit (image statistics, no refinement)", "image", 0),
                                              ("vaekit (per-tile statistics)", "tile", 0)):
            decoded = tiled_decode(model, z, args.tile, args.overlap, refinements, statistics=statistics)
            latent = tiled_encode(model, x, args.tile, args.overlap, refinements, statistics=statistics).mean
            results[name] = {"decode_max_abs_error": (decoded - untiled).abs().max().item(),
                             "decode_psnr_vs_untiled": psnr(decoded, untiled),
                             "encode_relative_error": ((latent - z).norm() / z.norm()).item()}
        try:
            from diffusers import AutoencoderKL

            from vaekit.models.convert import export_diffusers
            import tempfile

            with tempfile.TemporaryDirectory() as folder:
                export_diffusers(model, folder)
                twin = AutoencoderKL.from_pretrained(folder).eval()
            twin.enable_tiling()
            twin.tile_sample_min_size = args.tile
            twin.tile_latent_min_size = args.tile // model.downsampling_factor
            twin.tile_overlap_factor = args.overlap / args.tile
            decoded = twin.decode(z).sample
            latent = twin.encode(x).latent_dist.mean
            results["diffusers enable_tiling"] = {"decode_max_abs_error": (decoded - untiled).abs().max().item(),
                                                  "decode_psnr_vs_untiled": psnr(decoded, untiled),
                                                  "encode_relative_error": ((latent - z).norm() / z.norm()).item()}
        except ImportError:
            results["diffusers enable_tiling"] = "diffusers not installed"
    print(f"kl-f8-tiny after {args.steps} steps; 512×512 photo; tile {args.tile} px, overlap {args.overlap} px")
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
