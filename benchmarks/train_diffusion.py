"""Stage B training throughput: ``vaekit diffusion train`` (unet-tiny on exported latents) against the bare
diffusers loop a user writes from diffusers' unconditional-training example: ``UNet2DModel`` of the same
shape, ``DDPMScheduler.add_noise`` with the same schedule, ε-MSE, AdamW (lr 3e-4), gradients clipped at 1,
diffusers' ``EMAModel`` (0.999), batches of shuffled latents held in memory.

Latents: 512 random 64×64 crops of the built-in photos encoded by a kl-f8-tiny (seeded random weights,
scaled to unit standard deviation): 4×8×8 each. vaekit's time is its ``train_time_s`` (the loop, the final
checkpoint included; the single validation at the end excluded), the bare loop's the loop alone. Runs
alternate in one process; the ratio is of medians.

    python benchmarks/train_diffusion.py [--steps 60] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import vaekit
from common import interleaved, machine, median, write_json

BATCH, IMAGES, LR = 32, 512, 3e-4


def make_export(folder: Path) -> Path:
    """The latents both paths train on."""
    from vaekit.diffusion.images import write_photo_crops
    from vaekit.latents import export_latents
    from vaekit.models.latent_scale import measure_latent_scale, store_latent_scale

    images = write_photo_crops(folder / "images", 64, IMAGES)
    torch.manual_seed(0)
    vae = vaekit.create_model("kl-f8-tiny").eval()
    store_latent_scale(vae, measure_latent_scale(vae, [images[:128] * 2 - 1], torch.Generator().manual_seed(0)).norm)
    vaekit.save_model(vae, folder / "vae")
    export_latents(vae, str(folder / "images"), folder / "latents", model_source=folder / "vae", batch_size=32)
    return folder / "latents"


def overrides(steps: int, output_dir: str) -> list[str]:
    return [f"train.max_steps={steps}", "train.epochs=1000", f"train.batch_size={BATCH}", f"train.lr={LR}",
            "train.validate_every=100000", "train.snapshot_examples=0", "train.checkpoint_every=100000",
            "train.progress_bar=false", "seed=0", f"output_dir={output_dir}"]


def run_vaekit(latents: Path, steps: int) -> float:
    from vaekit.diffusion.config import diffusion_config

    with tempfile.TemporaryDirectory() as folder:
        run_dir = vaekit.train(diffusion_config(str(latents), None, overrides(steps, folder)), evaluate_at_end=False,
                               explore=False)
        return json.loads((run_dir / "metrics.json").read_text())["train"]["samples_per_s"]


def run_bare(latents: torch.Tensor, logvars: torch.Tensor, steps: int) -> float:
    """The loop a user writes from diffusers' example, drawing a posterior sample per example as LDM does."""
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    model = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                        norm_num_groups=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=0.999)
    order = torch.randperm(len(latents))
    start = time.perf_counter()
    for step in range(steps):
        rows = order[(step * BATCH) % len(latents):][:BATCH]
        clean = latents[rows] + torch.exp(0.5 * logvars[rows]) * torch.randn_like(latents[rows])
        noise = torch.randn_like(clean)
        t = torch.randint(0, 1000, (len(clean),))
        loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(clean, noise, t), t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.step(model.parameters())
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    from vaekit.latents import LatentDataset

    with tempfile.TemporaryDirectory() as folder:
        latents_dir = make_export(Path(folder))
        exported = LatentDataset(latents_dir)
        latents = torch.stack([exported[i]["latent"] for i in range(len(exported))]).float()
        logvars = torch.stack([exported[i]["logvar"] for i in range(len(exported))]).float()
        rates = {"vaekit": [], "bare": []}
        paths = {"vaekit": lambda: rates["vaekit"].append(run_vaekit(latents_dir, args.steps)),
                 "bare": lambda: rates["bare"].append(run_bare(latents, logvars, args.steps))}
        interleaved(paths, args.rounds, warmup=1)
    result = {"machine": machine(), "steps": args.steps, "batch": BATCH, "latent_shape": list(latents.shape[1:]),
              "vaekit samples/s": median(rates["vaekit"]), "bare loop samples/s": median(rates["bare"]), "all": rates}
    result["ratio"] = result["vaekit samples/s"] / result["bare loop samples/s"]
    print(f"unet-tiny on {IMAGES} latents {tuple(latents.shape[1:])}, batch {BATCH}, {args.steps} steps × {args.rounds} rounds")
    print(f"  vaekit diffusion train {result['vaekit samples/s']:.1f} samples/s, bare diffusers loop "
          f"{result['bare loop samples/s']:.1f} samples/s: {result['ratio']:.2f}×")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
