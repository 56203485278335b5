"""Recipe quality at a fixed budget: vaekit's kl-f8-tiny photos recipe against the plain loop a user
writes from the textbook, scored on held-out photographs.

The plain loop: diffusers' ``AutoencoderKL`` in kl-f8-tiny's shape, the same 64×64 random crops with
flips of the same seven scikit-image photographs (fresh ones every step), the same batch (8) and number
of steps, L1 (mean over pixels) + 1e-6 · KL (summed over the latent, mean over the batch), Adam with
torch's defaults at a constant learning rate, no EMA, no GAN. Each vaekit arm is
``configs/kl-f8-tiny-photos.yaml`` with the arm's overrides.

Held out (never trained on): the 64×64 grid crops of scikit-learn's two sample photographs (the
``photos`` test split, 120 crops) and eight 256×256 native-resolution crops of those two and of
matplotlib's Grace Hopper photograph. Metrics: PSNR and SSIM (means over images), and the
high-frequency energy of the reconstructions against the originals' (``hf_energy_ratio``: blur < 1).

    python benchmarks/recipe_quality.py [--steps 1500] [--arms recipe,plain,no-gan] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ARMS = {
    "recipe": [],
    "no-gan": ["loss.disc_weight=0"],
    "no-gan-no-warmup": ["loss.disc_weight=0", "train.lr_warmup_steps=0"],
    # The preset before this benchmark, and the single-seed ablation made from it.
    "recipe-cosine": ["train.lr_schedule=cosine"],
    "no-gan-cosine": ["loss.disc_weight=0", "train.lr_schedule=cosine"],
    "no-gan-cosine-no-clip": ["loss.disc_weight=0", "train.lr_schedule=cosine", "train.grad_clip=null"],
    "no-gan-cosine-adam-defaults": ["loss.disc_weight=0", "train.lr_schedule=cosine", "train.adam_betas=[0.9,0.999]"],
    "no-gan-cosine-no-ema": ["loss.disc_weight=0", "train.lr_schedule=cosine", "train.ema_decay=null"],
    # 1e-6 × 64 × 64 × 3: the KL's weight relative to the pixel loss in the plain loop, whose L1 is a mean
    "no-gan-cosine-plain-kl": ["loss.disc_weight=0", "train.lr_schedule=cosine", "loss.kl_weight=1.2288e-2"],
}
BATCH, CROP, LR = 8, 64, 1e-3
ROOT = Path(__file__).resolve().parents[1]


def held_out_256() -> torch.Tensor:
    """Eight native 256×256 crops of china, flower and Grace Hopper: ``(8, 3, 256, 256)`` in [-1, 1]."""
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from vaekit.data.photos import grid_crops

    photos = list(load_sample_images().images)
    photos.append(np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")))
    return torch.from_numpy(grid_crops(photos, 256)).float() / 127.5 - 1


def held_out_64() -> torch.Tensor:
    from vaekit.config import load_config
    from vaekit.data import build_dataset

    test = build_dataset(load_config(None, ["data.name=photos", f"data.crop_size={CROP}"]).data, "test")
    return test.images.float() / 127.5 - 1


@torch.no_grad()
def score(reconstruct, images: torch.Tensor) -> dict:
    from vaekit.metrics.image import high_frequency_energy, per_image_psnr, ssim

    out = torch.cat([reconstruct(images[i:i + 8]).clamp(-1, 1) for i in range(0, len(images), 8)])
    return {"psnr": per_image_psnr(out, images).mean().item(), "ssim": ssim(out, images).mean().item(),
            "hf_energy_ratio": (high_frequency_energy(out).sum() / high_frequency_energy(images).sum()).item()}


def run_vaekit(arm: str, steps: int, work: Path, seed: int = 0) -> tuple:
    import vaekit
    from vaekit.config import load_config

    epochs = math.ceil(steps * BATCH / 4000)
    overrides = ARMS[arm] + [f"train.max_steps={steps}", f"train.epochs={epochs}", "train.progress_bar=false",
                             f"output_dir={work}", f"run_name={arm}-seed{seed}", f"seed={seed}",
                             f"data.seed={seed}"]
    started = time.perf_counter()
    run = vaekit.train(load_config(ROOT / "configs" / "kl-f8-tiny-photos.yaml", overrides), evaluate_at_end=False,
                       explore=False)
    model = vaekit.load_model(run)
    return (lambda x: model.reconstruct(x)), time.perf_counter() - started


def run_plain(steps: int, seed: int = 0) -> tuple:
    """The textbook loop (see the module's docstring)."""
    from diffusers import AutoencoderKL
    from skimage import data

    from vaekit.data.photos import TRAIN_PHOTOS

    torch.manual_seed(seed)
    model = AutoencoderKL(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=16,
                          latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    photos = [torch.from_numpy(getattr(data, name)()).permute(2, 0, 1) for name in TRAIN_PHOTOS]
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    model.train()
    for _ in range(steps):
        crops = []
        for _ in range(BATCH):
            photo = photos[rng.integers(len(photos))]
            top, left = rng.integers(photo.shape[1] - CROP + 1), rng.integers(photo.shape[2] - CROP + 1)
            crop = photo[:, top:top + CROP, left:left + CROP]
            crops.append(crop.flip(-1) if rng.random() < 0.5 else crop)
        x = torch.stack(crops).float() / 127.5 - 1
        posterior = model.encode(x).latent_dist
        reconstruction = model.decode(posterior.sample()).sample
        loss = (reconstruction - x).abs().mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return (lambda x: model.decode(model.encode(x).latent_dist.mode()).sample), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--arms", default="recipe,plain,no-gan", help=f"comma-separated: plain, {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds: each arm runs once per seed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = {"64": held_out_64(), "256": held_out_256()}
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for arm in args.arms.split(","):
            for seed in map(int, args.seeds.split(",")):
                reconstruct, seconds = (run_plain(args.steps, seed) if arm == "plain"
                                        else run_vaekit(arm, args.steps, Path(work), seed))
                scores = {size: score(reconstruct, images) for size, images in sets.items()}
                results.setdefault(arm, []).append({"seed": seed, "train_seconds": seconds, **scores})
                row = "  ".join(f"{size}²: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.3f} HF {m['hf_energy_ratio']:.2f}"
                                for size, m in scores.items())
                print(f"{arm:<22} seed {seed}  {row}  ({seconds:.0f} s)", flush=True)
    summary = {arm: {size: {key: float(np.mean([r[size][key] for r in runs])) for key in runs[0][size]}
                     for size in sets} for arm, runs in results.items()}
    print("means over seeds:")
    for arm, sizes in summary.items():
        print(f"{arm:<22} " + "  ".join(f"{size}²: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.3f} HF {m['hf_energy_ratio']:.2f}"
                                        for size, m in sizes.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "runs": results, "means": summary}, indent=2))


if __name__ == "__main__":
    main()
