"""How closely tiled encoding/decoding matches untiled, for vaekit and for diffusers' enable_tiling.

Random weights say nothing about tiling (they amplify every difference), so the script first trains
kl-f8-tiny briefly (seeded; about 2.5 minutes on 2 CPU cores) on 64×64 crops of photographs that ship
with scikit-image, then encodes/decodes the astronaut at 512×512 (tiles of 256 px) and upscaled to
1024×1024 (tiles of 512 px), untiled and tiled, with vaekit's three GroupNorm modes (preview: image-wide
statistics from a downscaled pass, the default; measured: from full-size passes; tile: per tile, as
diffusers) at vaekit's default overlap (32 px), and with diffusers' AutoencoderKL enable_tiling (its
default 25 % overlap) on the same weights and tile size.

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


def compare(model, x: torch.Tensor, tile: int, overlap: int) -> dict:
    results = {}
    with torch.no_grad():
        z = model.encode(x).mean
        untiled = model.decode(z)
        results["untiled reconstruction PSNR vs the photo"] = psnr(untiled.clamp(-1, 1), x)
        for name, statistics, refinements in (("vaekit preview statistics (default)", "preview", 0),
                                              ("vaekit measured statistics, 1 refinement", "measured", 1),
                                              ("vaekit per-tile statistics", "tile", 0)):
            decoded = tiled_decode(model, z, tile, overlap, refinements, statistics=statistics)
            latent = tiled_encode(model, x, tile, overlap, refinements, statistics=statistics).mean
            results[name] = {"decode_max_abs_error": (decoded - untiled).abs().max().item(),
                             "decode_psnr_vs_untiled": psnr(decoded, untiled),
                             "encode_relative_error": ((latent - z).norm() / z.norm()).item()}
        try:
            import tempfile

            from diffusers import AutoencoderKL

            from vaekit.io.convert import export_diffusers

            with tempfile.TemporaryDirectory() as folder:
                export_diffusers(model, folder)
                twin = AutoencoderKL.from_pretrained(folder).eval()
            twin.enable_tiling()
            twin.tile_sample_min_size = tile
            twin.tile_latent_min_size = tile // model.downsampling_factor
            decoded = twin.decode(z).sample
            latent = twin.encode(x).latent_dist.mean
            results["diffusers enable_tiling (25 % overlap)"] = {
                "decode_max_abs_error": (decoded - untiled).abs().max().item(),
                "decode_psnr_vs_untiled": psnr(decoded, untiled),
                "encode_relative_error": ((latent - z).norm() / z.norm()).item()}
        except ImportError:
            results["diffusers enable_tiling"] = "diffusers not installed"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--json")
    args = parser.parse_args()
    model = train_tiny(args.steps)
    photo = photos()[0][None]
    results = {}
    for size, tile in ((512, 256), (1024, 512)):
        x = photo if size == 512 else torch.nn.functional.interpolate(photo, size=(size, size), mode="bicubic",
                                                                      align_corners=False).clamp(-1, 1)
        results[f"{size}x{size}, tile {tile}"] = compare(model, x, tile, args.overlap)
    print(f"kl-f8-tiny after {args.steps} steps; vaekit overlap {args.overlap} px")
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
