"""Training-step throughput of kl-f8-tiny with the full LDM loss (L1 + LPIPS + KL + PatchGAN with the
adaptive weight, discriminator on from step 0): vaekit's trainer against a bare PyTorch loop.

The bare loop uses the same modules (model, LPIPSWithDiscriminator) and does the same per step:
autoencoder forward, loss with the adaptive weight, backward, clipped AdamW step; then the
discriminator's loss, backward and step. LPIPS runs on a randomly initialised VGG16 (its ImageNet
weights cannot be downloaded here; the compute is the same). Samples per second, runs alternating
in one process, ratio of medians. Batch 8 of 64×64 crops of the built-in photos.

    python benchmarks/train_kl.py [--steps 40] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

import vaekit
from common import interleaved, machine, median, write_json
from vaekit.config import load_config
from vaekit.data import build_dataset
from vaekit.losses.lpips_gan import LPIPSGANConfig, LPIPSWithDiscriminator

BATCH = 8


def overrides(steps: int, output_dir: str) -> list[str]:
    return ["model.name=kl-f8-tiny", "data.name=photos", "data.crop_size=64", f"data.num_train={steps * BATCH}",
            "loss.name=lpips-gan", "loss.perceptual_weight=1.0", "loss.lpips_pretrained=false", "loss.disc_start=0",
            "train.epochs=1", f"train.batch_size={BATCH}", "train.snapshot_examples=0", "train.progress_bar=false",
            "train.checkpoint_every=100000", "train.lr=1e-4", "seed=0", f"output_dir={output_dir}"]


def run_vaekit(steps: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        run_dir = vaekit.train(load_config(None, overrides(steps, folder)), evaluate_at_end=False, explore=False)
        return json.loads((run_dir / "metrics.json").read_text())["train"]["samples_per_s"]


def run_bare(images: torch.Tensor, steps: int) -> float:
    import time

    torch.manual_seed(0)
    model = vaekit.create_model("kl-f8-tiny")
    loss_fn = LPIPSWithDiscriminator.for_model(
        LPIPSGANConfig(perceptual_weight=1.0, lpips_pretrained=False, disc_start=0), model)
    optimizer = torch.optim.AdamW(list(model.parameters()) + loss_fn.generator_parameters(), lr=1e-4,
                                  betas=(0.5, 0.9), weight_decay=0.0)
    d_optimizer = torch.optim.AdamW(loss_fn.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9), weight_decay=0.0)
    last_layer = loss_fn.last_layer(model)
    start = time.perf_counter()
    for step in range(steps):
        x = images[step * BATCH:(step + 1) * BATCH]
        output = model(x)
        loss, _ = loss_fn(x, output, step=step, last_layer=last_layer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + loss_fn.generator_parameters(), 10.0)
        optimizer.step()
        d_loss, _ = loss_fn.discriminator_step_loss(x, output.reconstruction.detach())
        d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        torch.nn.utils.clip_grad_norm_(loss_fn.discriminator.parameters(), 10.0)
        d_optimizer.step()
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    config = load_config(None, overrides(args.steps, "/tmp"))
    data = build_dataset(config.data, "train")
    images, _ = data.__getitems__(list(range(args.steps * BATCH)))
    images = images * 2 - 1  # the photos come in [0, 1]; the autoencoder wants [-1, 1]
    rates = {"vaekit": [], "bare": []}
    paths = {"vaekit": lambda: rates["vaekit"].append(run_vaekit(args.steps)),
             "bare": lambda: rates["bare"].append(run_bare(images, args.steps))}
    interleaved(paths, args.rounds, warmup=0)
    result = {"machine": machine(), "steps": args.steps, "batch": BATCH,
              "vaekit samples/s": median(rates["vaekit"]), "bare loop samples/s": median(rates["bare"]),
              "all": rates}
    result["ratio"] = result["vaekit samples/s"] / result["bare loop samples/s"]
    print(f"kl-f8-tiny, LPIPS + KL + PatchGAN, batch {BATCH} of 64×64, {args.steps} steps × {args.rounds} rounds")
    print(f"  vaekit trainer {result['vaekit samples/s']:.1f} samples/s, bare loop "
          f"{result['bare loop samples/s']:.1f} samples/s: {result['ratio']:.2f}×")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
