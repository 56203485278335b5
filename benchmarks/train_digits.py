"""vaekit's trainer against a bare PyTorch loop on the digits MLP VAE, plus the IWAE evaluation time.

Model: one hidden layer of 512, latent 8, Bernoulli likelihood; batch 64, 20 epochs, AdamW 1e-3,
gradient clipping at 10 (vaekit's default), on the 1,500 training digits. The bare loop uses the same
initial weights, the same batches and the same noise, so its final weights must match vaekit's.
Runs alternate (vaekit, vaekit lean, bare, ...) in one process; the ratio is of medians. "vaekit" is the
trainer with its defaults; "vaekit, lean" validates only at the end and saves no per-epoch snapshots,
like the bare loop.

    python benchmarks/train_digits.py [--rounds 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import vaekit
from vaekit.config import load_config
from vaekit.data import build_dataset
from vaekit.metrics import evaluate_likelihood

OVERRIDES = ["model.hidden_dims=[512]", "model.latent_dim=8", "data.name=digits", "train.epochs=20",
             "train.batch_size=64", "seed=0"]


LEAN = ["train.validate_every=100000", "train.snapshot_examples=0"]
"""vaekit doing what the bare loop does: validation only at the end (it always validates then), no
per-epoch snapshots. By default it also validates on 256 test digits after every epoch, keeps the best
weights, and saves the progression snapshots."""


def run_vaekit(output_dir: str, extra: list[str] = ()) -> tuple[float, float, vaekit.models.mlp.MLPVAE]:
    config = load_config(None, OVERRIDES + list(extra) + [f"output_dir={output_dir}"])
    start = time.perf_counter()
    run_dir = vaekit.train(config, evaluate_at_end=False, explore=False)  # training only: no eval, no figures
    wall = time.perf_counter() - start
    loop_rate = json.loads((run_dir / "metrics.json").read_text())["train"]["samples_per_s"]
    return wall, loop_rate, vaekit.load_model(run_dir)


def run_bare(images: torch.Tensor, fused: bool | None = None) -> tuple[float, torch.nn.Module]:
    """The plain PyTorch way: index the tensor, forward, loss, backward, clip, step.

    ``fused=None`` is torch's default AdamW (a per-tensor loop on CPU); ``fused=True`` is the one-kernel
    AdamW that vaekit's trainer uses, which isolates the trainer's own per-step overhead.
    """
    start = time.perf_counter()
    torch.manual_seed(0)  # the same initial weights as vaekit's run
    model = vaekit.create_model("mlp-vae", input_shape=(1, 8, 8), hidden_dims=[512], latent_dim=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=fused)
    noise = torch.Generator().manual_seed(0)
    x_all = images.flatten(1)
    for epoch in range(20):
        order = torch.from_numpy(np.random.default_rng([0, epoch]).permutation(len(x_all)))
        for i in range(0, len(order), 64):
            x = x_all[order[i:i + 64]]
            h = model.encoder(x)
            mean, logvar = h.chunk(2, dim=1)
            logvar = logvar.clamp(-30, 20)
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=noise)
            logits = model.decoder(z)
            reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)
            loss = (reconstruction + kl).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = load_config(None, OVERRIDES)
    train_data, test_data = build_dataset(config.data, "train"), build_dataset(config.data, "test")
    samples = 20 * len(train_data)
    walls: dict[str, list[float]] = {"vaekit": [], "vaekit_lean": [], "bare": [], "bare_fused": []}
    loop_rates = []
    with tempfile.TemporaryDirectory() as tmp:
        run_vaekit(tmp), run_bare(train_data.images)  # warm-up: imports, allocator, caches
        for _ in range(args.rounds):
            wall, loop_rate, vaekit_model = run_vaekit(tmp)
            walls["vaekit"].append(wall)
            loop_rates.append(loop_rate)
            walls["vaekit_lean"].append(run_vaekit(tmp, LEAN)[0])
            wall, bare_model = run_bare(train_data.images)
            walls["bare"].append(wall)
            walls["bare_fused"].append(run_bare(train_data.images, fused=True)[0])

    weight_difference = max((a - b).abs().max().item() for a, b in
                            zip(vaekit_model.state_dict().values(), bare_model.state_dict().values()))
    iwae = {}
    for k in (500, 5000):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            metrics = evaluate_likelihood(vaekit_model, test_data, iwae_samples=k)
            times.append(time.perf_counter() - start)
        iwae[k] = {"negative_iwae_bound": metrics["negative_iwae_bound"], "eval_s_median": statistics.median(times)}

    medians = {name: statistics.median(values) for name, values in walls.items()}
    rates = {name: samples / wall for name, wall in medians.items()}
    results = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": args.rounds,
        "wall_s_median": medians, "samples_per_s": rates,
        "vaekit_loop_samples_per_s": statistics.median(loop_rates),
        "ratio_vaekit_over_bare": rates["vaekit"] / rates["bare"],
        "ratio_vaekit_lean_over_bare": rates["vaekit_lean"] / rates["bare"],
        "ratio_vaekit_over_bare_fused": rates["vaekit"] / rates["bare_fused"],
        "max_abs_weight_difference_vs_bare": weight_difference,
        "test_negative_elbo": metrics["negative_elbo"],
        "iwae": iwae,
    }
    columns = (("vaekit", 10), ("vaekit_lean", 14), ("bare", 12), ("bare_fused", 20))
    print(f"{'':30}{'vaekit':>10}{'vaekit, lean':>14}{'bare loop':>12}{'bare, fused AdamW':>20}")
    print(f"{'wall s, 20 epochs (median)':30}" + "".join(f"{medians[n]:{w}.2f}" for n, w in columns))
    print(f"{'samples / s':30}" + "".join(f"{rates[n]:{w}.0f}" for n, w in columns))
    print(f"vaekit / bare loop: {results['ratio_vaekit_over_bare']:.2f} (lean: "
          f"{results['ratio_vaekit_lean_over_bare']:.2f}); vaekit / bare with fused AdamW: "
          f"{results['ratio_vaekit_over_bare_fused']:.2f}")
    print(f"final weights, max |vaekit - bare loop|: {weight_difference:.2e}")
    print(f"test -ELBO {metrics['negative_elbo']:.2f} nats (297 test digits)")
    for k, row in iwae.items():
        print(f"test -IWAE bound, k={k}: {row['negative_iwae_bound']:.2f} nats; evaluation {row['eval_s_median']:.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
