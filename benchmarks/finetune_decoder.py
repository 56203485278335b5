"""The fine-tune-decoder preset against its starting model, on held-out photographs.

``configs/finetune-decoder.yaml`` (the sd-vae-ft-mse recipe: decoder only, EMA, MSE + 0.1 LPIPS) scaled
to a CPU: 64×64 crops of the built-in photos, batch 8 with the preset's learning rate scaled to it
(8.64e-4 × 8 / 192 = 3.6e-5), ``--steps`` steps. Stable Diffusion's VAE cannot be downloaded here, so
the starting model is a kl-f8-tiny trained by ``configs/kl-f8-tiny-photos.yaml`` (give ``--start`` to use
another), and LPIPS runs only where its VGG weights are on the machine (``--lpips``); without them the
loss is MSE alone. The same held-out sets and metrics as ``recipe_quality.py``; the encoder and latents
are checked to be unchanged.

    python benchmarks/finetune_decoder.py [--start MODEL] [--steps 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch

from recipe_quality import ROOT, held_out_64, held_out_256, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", help="the model to fine-tune (default: train kl-f8-tiny with its photos preset)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lpips", action="store_true", help="MSE + 0.1 LPIPS as in the preset (needs the VGG weights)")
    parser.add_argument("--json")
    args = parser.parse_args()
    import vaekit
    from vaekit.config import load_config

    sets = {"64": held_out_64(), "256": held_out_256()}
    with tempfile.TemporaryDirectory() as work:
        start = args.start
        if start is None:
            start = vaekit.train(load_config(ROOT / "configs" / "kl-f8-tiny-photos.yaml",
                                             ["train.progress_bar=false", f"output_dir={work}", "run_name=start"]),
                                 evaluate_at_end=False, explore=False)
        overrides = [f"model.init_from={start}", "data.crop_size=64", "train.batch_size=8", "train.lr=3.6e-5",
                     f"train.max_steps={args.steps}", f"train.epochs={math.ceil(args.steps * 8 / 4000)}",
                     "train.validate_every=250", "train.checkpoint_every=250", "train.progress_bar=false",
                     f"output_dir={work}", "run_name=finetuned"]
        if not args.lpips:
            overrides.append("loss.perceptual_weight=0")
        run = vaekit.train(load_config(ROOT / "configs" / "finetune-decoder.yaml", overrides), evaluate_at_end=False,
                           explore=False)
        before, after = vaekit.load_model(start), vaekit.load_model(run)
        results = {}
        for name, model in (("start", before), ("fine-tuned", after)):
            results[name] = {size: score(model.reconstruct, images) for size, images in sets.items()}
            print(name.ljust(12), "  ".join(f"{size}²: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.3f} HF "
                                            f"{m['hf_energy_ratio']:.2f}" for size, m in results[name].items()))
        with torch.no_grad():
            x = sets["64"][:16]
            same = torch.equal(before.encode(x).mean, after.encode(x).mean)
        print(f"encoder unchanged: {same}; scaling factor {after.config.scaling_factor:g} "
              f"(start {before.config.scaling_factor:g})")
        results["encoder_unchanged"] = same
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "lpips": args.lpips, "results": results}, indent=2))


if __name__ == "__main__":
    main()
