"""Representation autoencoders offline: an RAE whose frozen encoder vaekit pretrained itself, against a KL
autoencoder by what diffusion generates from their latents, and Stage B's two options for wide latents
measured on the RAE's latents against the defaults (issue 33, items 2 and 3).

DINOv2's weights cannot be downloaded on the machine this was written on, so a small ViT stands in for it:

1. **The encoder.** A ViT-MAE (transformers' ``ViTMAEForPreTraining``, its own masked-autoencoder loss: 75 % of
   the patches hidden, normalised-pixel targets) pretrained self-supervised on the ``objects`` training
   stream at 32², patch 4, so 8 × 8 tokens of 128 channels. Its shape is one diffusers' ``AutoencoderRAE``
   rebuilds (64-wide heads, MAE's default 3,072-wide MLP, 224² position grid interpolated to the input), and
   MAE is one of the three encoder families RAE's paper trains decoders for. A linear probe of its
   mean-pooled tokens on held-out objects is set against the same ViT left random and the raw pixels.
2. **The autoencoders**, the same steps and batch: the RAE (``model.name=rae``: that encoder frozen, a ViT
   decoder of 4 layers 256 wide trained on its tokens with RAE's latent noise, σ ~ U(0, 0.8)) and a KL
   autoencoder with 4 × 8 × 8 latents (f = 4), both with L1 only: LPIPS's VGG weights cannot be downloaded
   here and the GAN is left out of both (``--perceptual 1`` turns LPIPS on where the weights are).
3. **Stage B**, ``vaekit diffusability`` with the studies' budget (class-conditional unet-tiny, 600 steps, 4
   denoiser seeds, 250 samples, judged by the objects classifier on held-out objects):
   ``default``: the RAE and the KL autoencoder under the defaults; ``wide``: the RAE with ``unet-wide`` (the
   first level 128 wide, a token's width); ``wide-shifted``: ``unet-wide`` and ``--time-shift auto`` with the
   base size set to the KL autoencoder's latents here (4 × 8 × 8 = 256), as RAE's 4,096 is SD-VAE's latent
   size at its resolution: α = √(128 · 64 / 256) = 5.66 (DINOv2-B's at 256² is 6.93). The RAE's rows are then
   compared across the three with the verdict's test (two-sided permutation test, Holm-adjusted).

Finished steps are kept: run it again after an interruption and it goes on where it stopped.

    python benchmarks/rae_objects_study.py -o rae-study [--device cpu]

The command for the real encoder, on a GPU, is in docs/rae.md ("Stage B on RAE latents").
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from common import merged, run
from vaekit.data.objects import make_objects
from vaekit.models.rae import IMAGENET

SIZE, STEPS, BATCH = 32, 3000, 32
ENCODER = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 3072,
           "image_size": 224, "patch_size": 4, "mask_ratio": 0.75, "norm_pix_loss": True,
           "decoder_hidden_size": 128, "decoder_num_hidden_layers": 2, "decoder_num_attention_heads": 2,
           "decoder_intermediate_size": 512}
"""The stand-in encoder: heads 64 wide and MAE's default MLP and grid, as diffusers rebuilds an MAE encoder."""
PRETRAIN = {"steps": 3000, "batch": 128, "lr": 1.5e-3, "warmup": 150, "weight_decay": 0.05}
"""MAE's recipe (AdamW (0.9, 0.95), weight decay 0.05, warm-up then cosine) at its base rate 1.5e-4 per 256
images scaled up for a short run; flips as the only augmentation (objects are already placed at random)."""
TRAIN_IMAGES, PROBE_IMAGES = 6400, 2000
COMMON = {
    "data": {"name": "objects", "image_size": SIZE, "num_train": TRAIN_IMAGES, "num_test": 256},
    "train": {"max_steps": STEPS, "epochs": 1000, "batch_size": BATCH, "lr_warmup_steps": 100, "lr_schedule": "cosine",
              "ema_decay": 0.999, "validate_every": 500, "checkpoint_every": 500, "snapshot_examples": 0,
              "progress_bar": False},
}
RAE = {"model": {"name": "rae", "encoder_input_size": SIZE, "patch_size": 4, "decoder_hidden_size": 256,
                 "decoder_num_hidden_layers": 4, "decoder_num_attention_heads": 4, "decoder_intermediate_size": 1024},
       "loss": {"disc_weight": 0.0},
       "train": {"lr": 5.0e-4, "adam_betas": [0.9, 0.95]}}
KL = {"model": {"name": "autoencoder-kl", "block_out_channels": [32, 64, 64], "layers_per_block": 1,
                "norm_num_groups": 16, "latent_channels": 4, "sample_size": SIZE},
      "loss": {"name": "lpips-gan", "kl_weight": 1.0e-6, "disc_weight": 0.0},
      "train": {"lr": 1.0e-3}}
BUDGET = {"data": "objects", "resolution": SIZE, "min_latent_side": 8, "images": 2000, "steps": 600,
          "batch_size": 32, "seeds": (0, 1, 2, 3), "samples": 250, "class_conditional": True, "dinov2": ""}
ARMS = {"default": {}, "wide": {"unet": "unet-wide"},
        "wide-shifted": {"unet": "unet-wide", "time_shift": "auto", "time_shift_base_dim": 4 * 8 * 8}}


def normalised(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, 3, h, w)`` → the encoder's input, ImageNet-normalised as RAE feeds an MAE encoder."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    return (torch.from_numpy(images).float() / 255 - mean) / std


def pretrain_encoder(folder: Path, device: str) -> dict:
    """The MAE stand-in, saved as the ``ViTMAEModel`` folder that ``model.encoder`` takes."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(**ENCODER)).to(device).train()
    images = normalised(make_objects(TRAIN_IMAGES, SIZE, seed=0, stream=0)[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], betas=(0.9, 0.95),
                                  weight_decay=PRETRAIN["weight_decay"])
    steps, warmup = PRETRAIN["steps"], PRETRAIN["warmup"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / (steps - warmup))))))
    generator, losses = torch.Generator().manual_seed(0), []
    for step in range(steps):
        batch = images[torch.randint(len(images), (PRETRAIN["batch"],), generator=generator)]
        flip = torch.rand(len(batch), generator=generator) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch).to(device)
        loss = model(pixel_values=batch, interpolate_pos_encoding=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.vit.config.mask_ratio = 0.0  # every token, as diffusers' RAE encodes
    model.vit.save_pretrained(folder)
    return {"first_loss": round(float(np.mean(losses[:50])), 4), "last_loss": round(float(np.mean(losses[-50:])), 4)}


@torch.no_grad()
def pooled_tokens(encoder, images: np.ndarray, device: str) -> np.ndarray:
    out = []
    for i in range(0, len(images), 256):
        x = normalised(images[i:i + 256]).to(device)
        noise = torch.arange((SIZE // 4) ** 2, device=device).expand(len(x), -1).float()  # keeps every patch in order
        out.append(encoder(x, noise=noise, interpolate_pos_encoding=True).last_hidden_state[:, 1:].mean(1).cpu())
    return torch.cat(out).numpy()


def linear_probe(folder: Path, device: str) -> dict:
    """Held-out accuracy of a logistic regression on mean-pooled tokens: the pretrained encoder against the
    same architecture left random and against the raw pixels (probe trained on 2,000 training-stream objects,
    scored on 2,000 of stream 1; chance is 0.1). The pixels say whether a linear probe can tell these classes
    apart at all: objects vary in colour, size, position and rotation, so a class is a shape, not a direction."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import ViTMAEConfig, ViTMAEModel

    train_x, train_y = make_objects(PROBE_IMAGES, SIZE, seed=0, stream=0)
    test_x, test_y = make_objects(PROBE_IMAGES, SIZE, seed=0, stream=1)
    torch.manual_seed(0)
    encoders = {"pretrained": ViTMAEModel.from_pretrained(folder),
                "random": ViTMAEModel(ViTMAEConfig(**{**ENCODER, "mask_ratio": 0.0}))}
    pixels = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pixels.fit(train_x.reshape(len(train_x), -1) / 255, train_y)
    accuracy = {"pixels": round(float(pixels.score(test_x.reshape(len(test_x), -1) / 255, test_y)), 3)}
    for name, encoder in encoders.items():
        encoder = encoder.to(device).eval()
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(pooled_tokens(encoder, train_x, device), train_y)
        accuracy[name] = round(float(probe.score(pooled_tokens(encoder, test_x, device), test_y)), 3)
    return accuracy


def rae_rows(out: Path) -> dict[str, dict]:
    """Each arm's RAE row, renamed by its arm."""
    from vaekit.diffusion.page import JSON_FILE

    rows = {}
    for arm in ARMS:
        report = json.loads((out / arm / JSON_FILE).read_text())
        row = next(r for r in report["rows"] if r["vae"] == "rae")
        rows[arm] = {**row, "vae": f"rae ({arm})", "arbiter": report["judge"]["decided_by"]}
    return rows


def compare_arms(out: Path) -> list[str]:
    """The RAE under each Stage B option set against the defaults, by the verdict's test."""
    from vaekit.diffusion.page import JSON_FILE
    from vaekit.diffusion.verdict import _values, comparisons

    rows = rae_rows(out)
    arbiter = rows["default"]["arbiter"]
    default = json.loads((out / "default" / JSON_FILE).read_text())
    lines = [f"judge: {arbiter}", f"RAE against KL (default): {default['verdict']}"]
    for row in default["rows"]:
        lines.append(f"{row['vae']}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}, latents {row['latent_shape']}")
    for arm, row in rows.items():
        values = _values(row, arbiter)
        lines.append(f"{row['vae']}: {np.mean(values):.2f} (seeds {', '.join(f'{v:.2f}' for v in values)})")
    for result in comparisons(rows["default"], [rows["wide"], rows["wide-shifted"]], arbiter):
        lines.append(f"default against {result['vae']}: Holm-adjusted p = {result['p']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", default="rae-study")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--perceptual", type=float, default=0.0,
                        help="LPIPS weight of the KL autoencoder, twice it for the RAE as its preset has (default 0)")
    args = parser.parse_args()
    from vaekit.diffusion.diffusability import compare, make_budget
    from vaekit.diffusion.page import JSON_FILE

    out, times = Path(args.out), {}
    out.mkdir(parents=True, exist_ok=True)
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    encoder = out / "encoder"
    for name, step in (("encoder", lambda: pretrain_encoder(encoder, args.device)),
                       ("probe", lambda: linear_probe(encoder, args.device))):
        if name not in summary:
            start = time.perf_counter()
            summary[name] = step()
            times[name] = round(time.perf_counter() - start, 1)
            summary_file.write_text(json.dumps(summary, indent=1))
    rae = merged(COMMON, RAE, {"model": {"encoder": str(encoder)}, "loss": {"perceptual_weight": 2 * args.perceptual}})
    for name, recipe in (("rae", rae), ("kl", merged(COMMON, KL, {"loss": {"perceptual_weight": args.perceptual}}))):
        run(recipe, name, out / "runs", args.device, times)
    for arm, options in ARMS.items():
        if not (out / arm / JSON_FILE).exists():
            start = time.perf_counter()
            models = [out / "runs" / "rae" / "model"] + ([out / "runs" / "kl" / "model"] if arm == "default" else [])
            compare([str(m) for m in models], make_budget({**BUDGET, **options}), out / arm, args.device)
            times[f"stage-b-{arm}"] = round(time.perf_counter() - start, 1)
    summary["stage_b"] = compare_arms(out)
    summary["times"] = {**summary.get("times", {}), **times}
    summary_file.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
