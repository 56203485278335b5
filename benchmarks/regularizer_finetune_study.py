"""The latent regularisers in their published setting, and the meta-study of cheap signals, in one run.

1. One autoencoder (f = 4, 4 latent channels, KL 1e-6; ``objects`` at 32², so its latents are 8 × 8) is
   trained until its validation PSNR has flattened at a constant learning rate (a decaying one flattens any
   curve): 12,000 steps of batch 16 at 1e-3, validated every 400 steps (the curve is
   ``OUT/runs/converged/train_log.jsonl``).
2. Every arm starts from its weights and fine-tunes for the same 300 steps at a constant 2e-4 with one
   regulariser each — EQ-VAE (p 0.5), scale equivariance (weight 1), latent denoising (γ 3, masking ≤ 0.7) —
   against the control of the same 300 steps without one; 2 fine-tune seeds each.
3. Five configurations trained from scratch (400 steps) widen the meta-study: KL 1e-2, 3 and 16 latent
   channels at f = 4, and two f = 2 ones (16 × 16 latents).
4. ``vaekit diffusability`` on all of them: class-conditional unet-tiny, 600 steps, 4 denoiser seeds (so that one autoencoder alone has the 4 values a test needs), 250
   samples each, judged by the objects classifier on held-out objects; its track record (Spearman ρ of
   each cheap signal with the judge over the 10 configurations, and within f = 4) is the meta-study.

LPIPS and the GAN are off in every arm, as in the from-scratch studies: LPIPS's VGG weights cannot be
downloaded on the machine this was measured on (``--perceptual 1`` turns LPIPS on where they can).
Finished runs are kept and an interrupted one goes on from its last checkpoint: run it again after an
interruption and it goes on where it stopped.

    python benchmarks/regularizer_finetune_study.py -o study [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import merged, run

BASE = {
    "model": {"name": "autoencoder-kl", "block_out_channels": [32, 64, 64], "layers_per_block": 1,
              "norm_num_groups": 16, "latent_channels": 4, "sample_size": 32},
    "data": {"name": "objects", "image_size": 32, "num_train": 6400, "num_test": 256},
    "loss": {"name": "lpips-gan", "kl_weight": 1.0e-6, "perceptual_weight": 0.0, "disc_weight": 0.0},
    "train": {"epochs": 1000, "batch_size": 16, "lr": 1.0e-3, "lr_warmup_steps": 50, "ema_decay": 0.999,
              "snapshot_examples": 0, "checkpoint_every": 500},
}
CONVERGE = {"train": {"max_steps": 12000, "lr_schedule": "constant", "validate_every": 400}}
FINETUNE = {"train": {"max_steps": 300, "lr": 2.0e-4, "lr_warmup_steps": 20, "ema_decay": 0.0,
                      "validate_every": 100}}
ARMS = {
    "ft-control": {},
    "ft-eqvae": {"loss": {"eqvae_prob": 0.5}},
    "ft-scale-equivariance": {"loss": {"scale_equivariance_weight": 1.0}},
    "ft-latent-denoising": {"loss": {"latent_noise_gamma": 3.0, "latent_mask_ratio": 0.7}},
}
FINETUNE_SEEDS = (0, 1)
SCRATCH = {
    "scratch-kl1e-2": {"loss": {"kl_weight": 1.0e-2}},
    "scratch-3ch": {"model": {"latent_channels": 3}},
    "scratch-16ch": {"model": {"latent_channels": 16}},
    "scratch-f2": {"model": {"block_out_channels": [32, 64]}},
    "scratch-f2-kl1e-2": {"model": {"block_out_channels": [32, 64]}, "loss": {"kl_weight": 1.0e-2}},
}
BUDGET = {"data": "objects", "resolution": 32, "min_latent_side": 8, "images": 2000, "steps": 600,
          "batch_size": 32, "seeds": (0, 1, 2, 3), "samples": 250, "class_conditional": True, "dinov2": ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", default="study")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--perceptual", type=float, default=0.0, help="LPIPS weight of every arm (default 0)")
    parser.add_argument("--vf-model", help="add VA-VAE's alignment arm with this vision model (downloaded on first "
                                           "use), e.g. timm:vit_small_patch14_dinov2.lvd142m")
    args = parser.parse_args()
    if args.vf_model:
        ARMS["ft-va-vae"] = {"loss": {"vf_model": args.vf_model}}
    from vaekit.diffusion.diffusability import compare, make_budget

    out, times = Path(args.out), {}
    runs, base = out / "runs", merged(BASE, {"loss": {"perceptual_weight": args.perceptual}})
    start = time.perf_counter()
    converged = run(merged(base, CONVERGE), "converged", runs, args.device, times)
    source = {"model": {"init_from": str(converged / "model")}}
    finetuned = [run(merged({k: v for k, v in base.items() if k != "model"}, source, FINETUNE, arm,
                            {"seed": seed}), f"{name}_seed={seed}", runs, args.device, times)
                 for name, arm in ARMS.items() for seed in FINETUNE_SEEDS]
    scratch = [run(merged(base, {"train": {"max_steps": 400}}, extra), name, runs, args.device, times)
               for name, extra in SCRATCH.items()]
    trained = time.perf_counter()
    page = compare([str(p) for p in [converged, *finetuned, *scratch]], make_budget(dict(BUDGET)),
                   out / "report", args.device)
    times.update(training=round(trained - start, 1), comparison=round(time.perf_counter() - trained, 1),
                 total=round(time.perf_counter() - start, 1))
    (out / "times.json").write_text(json.dumps(times, indent=1))
    print(f"report: {page}\ntimes (s): {json.dumps(times)}")


if __name__ == "__main__":
    main()
