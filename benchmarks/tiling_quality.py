"""How closely tiled encoding/decoding matches untiled, for vaekit and for diffusers' enable_tiling.

Random weights say nothing about tiling (they amplify every difference), so the script first trains
kl-f8-tiny briefly (seeded; about 2.5 minutes on 2 CPU cores) on 64×64 crops of photographs that ship
with scikit-image, then encodes/decodes the astronaut at 512×512 (tiles of 256 px) and upscaled to
1024×1024 (tiles of 512 px), untiled and tiled, with vaekit's three GroupNorm modes (preview: image-wide
statistics from a downscaled pass, the default; measured: from full-size passes; tile: per tile, as
diffusers) at vaekit's default overlap (32 px), and with diffusers' AutoencoderKL enable_tiling (its
default 25 % overlap) on the same weights and tile size.

    python benchmarks/tiling_quality.py [--steps 600] [--seeds 0,1] [--images 4] [--json out.json]

With several seeds and photographs (each a centred square at 512², tiles of 256 px) it prints each arm's
spread over them.
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


def train_tiny(steps: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = vaekit.create_model("kl-f8-tiny")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    rng = np.random.default_rng(seed)
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


def square(photo: torch.Tensor, size: int) -> torch.Tensor:
    """The photograph's centred square, resized to ``size``² (bicubic), ``(1, 3, size, size)``."""
    side = min(photo.shape[1:])
    top, left = (photo.shape[1] - side) // 2, (photo.shape[2] - side) // 2
    crop = photo[None, :, top:top + side, left:left + side]
    return torch.nn.functional.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def spread(results: dict) -> dict:
    """Per arm: min, mean and max of decode PSNR and encode error over every model seed and photograph."""
    arms: dict[str, dict[str, list[float]]] = {}
    for per_case in results.values():
        for arm, values in per_case.items():
            if isinstance(values, dict):
                for key in ("decode_psnr_vs_untiled", "encode_relative_error"):
                    arms.setdefault(arm, {}).setdefault(key, []).append(values[key])
    return {arm: {key: {"min": min(v), "mean": sum(v) / len(v), "max": max(v), "cases": len(v)}
                  for key, v in values.items()} for arm, values in arms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--seeds", default="0", help="training seeds of the model, comma-separated (default 0)")
    parser.add_argument("--images", type=int, default=1,
                        help="photographs at 512² (tile 256): the astronaut, then coffee, the cat, the rocket (default 1)")
    parser.add_argument("--json")
    args = parser.parse_args()
    pictures = photos()[:max(1, min(args.images, 4))]
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        model = train_tiny(args.steps, seed)
        for k, picture in enumerate(pictures):
            results[f"seed {seed}, photo {k}, 512x512, tile 256"] = compare(model, square(picture, 512), 256, args.overlap)
        if len(pictures) == 1:  # the astronaut upscaled too, as in docs/performance.md
            results[f"seed {seed}, photo 0, 1024x1024, tile 512"] = compare(model, square(pictures[0], 1024), 512,
                                                                            args.overlap)
    summary = spread(results)
    print(f"kl-f8-tiny after {args.steps} steps (seeds {args.seeds}); vaekit overlap {args.overlap} px")
    print(json.dumps(results, indent=2))
    for arm, values in summary.items():
        psnrs, errors = values["decode_psnr_vs_untiled"], values["encode_relative_error"]
        print(f"{arm}: decode {psnrs['min']:.1f}–{psnrs['max']:.1f} dB (mean {psnrs['mean']:.1f}), encode error "
              f"{errors['min']:.3f}–{errors['max']:.3f} over {psnrs['cases']} cases")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": results, "spread": summary}, f, indent=2)


if __name__ == "__main__":
    main()
