"""Recipe quality, cross-domain: vaekit's kl-f8-tiny photos preset against the plain loop a user writes from
the LDM paper's description, trained on one collection of photographs and scored on another.

The plain loop: diffusers' ``AutoencoderKL`` in kl-f8-tiny's shape, the training folder's images decoded
once into memory, fresh 64×64 random crops with flips every step, batch 8, mean L1 + 1e-6 · KL (summed
over the latent, mean over the batch), Adam (0.5, 0.9) at a constant 1e-3, no EMA, no GAN. Each vaekit
arm is ``configs/kl-f8-tiny-photos.yaml`` reading the same folder (``data.name=folder-crops``) with the
arm's overrides, for the same number of steps.

Collections (``--train DIR --test DIR`` for your own): by default the training folder is scikit-image's
seven colour photographs (the built-in ``photos`` training set) and the scored folder scikit-learn's two
sample photographs and matplotlib's Grace Hopper, written as PNG files first, so both sides decode files
as a user's run would. ``--split DIR`` takes a split built by benchmarks/photo_collections.py (``DIR/train``:
Urban100's 100 photographs; ``DIR/test``: BSD68's 68, resized and centre-cropped to 256² as a diffusion model
sees them). Scores, on every non-overlapping native-resolution crop of the scored images, at
64² and 256²: PSNR and SSIM (means over crops) and the reconstructions' high-frequency energy over the
originals' (``hf_energy_ratio``: blur < 1). Wall time: the whole ``vaekit.train`` call (validation,
checkpoints and latent calibration included) against the plain loop's, seeds interleaved.

    python benchmarks/recipe_quality.py [--steps 1500] [--arms plain,preset] [--seeds 0,1,2] [--split DIR] [--json out.json]
    python benchmarks/recipe_quality.py --merge out.json more-seeds.json [--against preset]
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

BATCH, CROP, LR, EXAMPLES_PER_EPOCH = 8, 64, 1e-3, 4000
LDM = ["loss.disc_weight=0.5", "loss.disc_start={disc_start}", "loss.reduction=sum", "train.ema_decay=0.995",
       "train.grad_clip=10", "train.lr_warmup_steps=100"]
"""LDM's recipe as the preset had it before this benchmark: PatchGAN from 60 % of the steps (900 of 1,500),
summed-pixel reconstruction, EMA, clipping at 10, warm-up."""
NO_GAN = LDM + ["loss.disc_weight=0"]
ARMS = {
    "preset": [],
    "ldm": LDM,
    "ldm-no-gan": NO_GAN,
    "ldm-no-gan-no-ema": NO_GAN + ["train.ema_decay=null"],
    "ldm-no-gan-mean": NO_GAN + ["loss.reduction=mean"],
    "ldm-no-gan-no-clip": NO_GAN + ["train.grad_clip=null"],
    "ldm-no-gan-no-warmup": NO_GAN + ["train.lr_warmup_steps=0"],
    "preset-no-cache": ["data.cache=false"],
    # Issue 31 item 5, the preset's seed dependence: the KL's weight relative to a per-pixel-mean reconstruction
    # as in the plain loop (1e-6 · C·H·W of a 64² crop), the summed reduction, and so clipping, kept ...
    "preset-kl-matched": [f"loss.kl_weight={1e-6 * 3 * CROP * CROP:g}"],
    # ... and everything the plain loop lacks removed at once: what remains is the implementation and the data order.
    "preset-as-plain": ["loss.reduction=mean", "train.grad_clip=null", "train.ema_decay=null", "train.lr_warmup_steps=0"],
}
ROOT = Path(__file__).resolve().parents[1]


def builtin_collections(work: Path) -> tuple[Path, Path]:
    """The default collections as PNG folders: scikit-image's photos to train, three others to score."""
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from vaekit.data.photos import TRAIN_PHOTOS, builtin_photographs

    train, test = work / "train", work / "test"
    train.mkdir()
    test.mkdir()
    photos = builtin_photographs()
    for name in TRAIN_PHOTOS:
        Image.fromarray(photos[name]).save(train / f"{name}.png")
    for name, image in zip(("china", "flower"), load_sample_images().images):
        Image.fromarray(image).save(test / f"{name}.png")
    Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").save(test / "grace_hopper.png")
    return train, test


def read_folder(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    from vaekit.data.lazy import find_images

    return [np.asarray(Image.open(path).convert("RGB")) for path in find_images(folder)]


def scored_sets(test: Path) -> dict[str, torch.Tensor]:
    from vaekit.data.photos import grid_crops

    images = read_folder(test)
    return {str(size): torch.from_numpy(grid_crops(images, size)).float() / 127.5 - 1 for size in (CROP, 256)}


@torch.no_grad()
def score(reconstruct, images: torch.Tensor) -> dict:
    from vaekit.metrics.image import high_frequency_energy, per_image_psnr, ssim

    out = torch.cat([reconstruct(images[i:i + 8]).clamp(-1, 1) for i in range(0, len(images), 8)])
    return {"psnr": per_image_psnr(out, images).mean().item(), "ssim": ssim(out, images).mean().item(),
            "hf_energy_ratio": (high_frequency_energy(out).sum() / high_frequency_energy(images).sum()).item()}


def run_vaekit(arm: str, steps: int, train: Path, test: Path, work: Path, seed: int) -> tuple:
    import vaekit
    from vaekit.config import load_config
    from vaekit.data.lazy import find_images

    crops = math.ceil(EXAMPLES_PER_EPOCH / len(find_images(train)))
    epochs = math.ceil(steps * BATCH / (crops * len(find_images(train))))
    overrides = [
        "data.name=folder-crops", f"data.path={train}", f"data.test_path={test}", f"data.crops_per_image={crops}",
        *[o.format(disc_start=round(0.6 * steps)) for o in ARMS[arm]], f"train.max_steps={steps}", f"train.epochs={epochs}", "train.progress_bar=false", f"output_dir={work}",
        f"run_name={arm}-seed{seed}", f"seed={seed}", f"data.seed={seed}"]
    started = time.perf_counter()
    run = vaekit.train(load_config(ROOT / "configs" / "kl-f8-tiny-photos.yaml", overrides), evaluate_at_end=False,
                       explore=False, device="cpu")
    seconds = time.perf_counter() - started
    model = vaekit.load_model(run)
    return (lambda x: model.reconstruct(x)), seconds


def run_plain(steps: int, train: Path, seed: int) -> tuple:
    """The plain loop (see the module's docstring)."""
    from diffusers import AutoencoderKL

    started = time.perf_counter()
    torch.manual_seed(seed)
    model = AutoencoderKL(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=16,
                          latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.5, 0.9))
    photos = [torch.from_numpy(image).permute(2, 0, 1) for image in read_folder(train)]
    rng = np.random.default_rng(seed)
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


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def sign_flip_p(differences: list[float]) -> float:
    """Exact two-sided sign-flip test of a zero mean paired difference: the share of the 2^n sign patterns
    whose mean is at least the observed one in absolute value."""
    from scipy import stats

    result = stats.permutation_test((np.asarray(differences),), np.mean, permutation_type="samples",
                                    n_resamples=np.inf, alternative="two-sided")
    return float(result.pvalue)


def spread_p(values: list[float], reference: list[float]) -> float:
    """Brown–Forsythe test of equal spreads (Levene's test about the median)."""
    from scipy import stats

    return float(stats.levene(values, reference, center="median").pvalue)


def summarise(results: dict, sizes: list[str], against: str = "plain", timed: bool = True) -> None:
    """Per arm: mean ± standard deviation over seeds, the paired difference from the ``against`` arm with an
    exact sign-flip test, a Brown–Forsythe test of the seed spreads against that arm's (PSNR), and when
    ``timed`` the median wall time."""
    reference = {r["seed"]: r for r in results.get(against, [])}
    print(f"\narm: mean ± sd over seeds [paired difference from {against}, mean ± sd, exact sign-flip p; "
          f"PSNR: Brown–Forsythe p of equal seed spreads]" + ("; wall time median" if timed else ""))
    for arm, runs in results.items():
        cells = []
        for size in sizes:
            for key in ("psnr", "ssim", "hf_energy_ratio"):
                values = [r[size][key] for r in runs]
                cell = f"{size}² {key} {spread(values)}"
                paired = [r[size][key] - reference[r["seed"]][size][key] for r in runs if r["seed"] in reference]
                if arm != against and len(paired) > 1:
                    cell += f" [{spread(paired)}, p {sign_flip_p(paired):.2g}"
                    if key == "psnr":
                        cell += f"; spread p {spread_p(values, [r[size][key] for r in reference.values()]):.2g}"
                    cell += "]"
                cells.append(cell)
        seconds, ratio = float(np.median([r["train_seconds"] for r in runs])), ""
        if arm != against and reference:
            ratio = f" ({seconds / np.median([r['train_seconds'] for r in reference.values()]):.2f}× {against})"
        print(f"{arm} ({len(runs)} seeds): " + "; ".join(cells) + (f"; {seconds:.0f} s{ratio}" if timed else ""))


def merged_results(files: list[Path]) -> tuple[int, dict]:
    """The runs of several ``--json`` files of the same step count, each arm's seeds together."""
    steps, results = None, {}
    for file in files:
        payload = json.loads(file.read_text())
        if steps is not None and payload["steps"] != steps:
            raise SystemExit(f"{file} ran {payload['steps']} steps, the others {steps}: not comparable")
        steps = payload["steps"]
        for arm, runs in ((arm, runs) for arm, runs in payload["runs"].items() if runs):
            have = {r["seed"] for r in results.get(arm, [])}
            if have & {r["seed"] for r in runs}:
                raise SystemExit(f"{file}: {arm} has seeds {sorted(have & {r['seed'] for r in runs})} twice")
            results.setdefault(arm, []).extend(runs)
    return steps, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--arms", default="plain,preset", help=f"comma-separated: plain, {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds: each arm runs once per seed")
    parser.add_argument("--train", type=Path, help="folder of photographs to train on (default: built-in)")
    parser.add_argument("--test", type=Path, help="folder of other photographs to score on (default: built-in)")
    parser.add_argument("--split", type=Path,
                        help="a folder with train/ and test/ (benchmarks/photo_collections.py builds one): --train DIR/train "
                             "--test DIR/test")
    parser.add_argument("--json")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="train nothing: summarise the runs of these --json files together (their seeds differ)")
    parser.add_argument("--against", default="plain", help="the arm the others are paired with (default plain)")
    args = parser.parse_args()
    if args.merge:
        steps, results = merged_results(args.merge)
        print(f"{steps} steps; " + ", ".join(f"{arm}: seeds {sorted(r['seed'] for r in runs)}"
                                             for arm, runs in results.items()))
        print("wall times are not compared: the files' runs ran at different times, under different loads")
        summarise(results, [str(size) for size in (CROP, 256)], args.against, timed=False)
        return
    if args.split is not None:
        if args.train is not None or args.test is not None:
            parser.error("--split replaces --train and --test")
        args.train, args.test = args.split / "train", args.split / "test"
        for folder in (args.train, args.test):
            if not folder.is_dir():
                parser.error(f"{folder} is not a folder: build the split with benchmarks/photo_collections.py {args.split}")
    if (args.train is None) != (args.test is None):
        parser.error("--train and --test go together")
    arms = args.arms.split(",")
    results: dict[str, list] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        train, test = (args.train, args.test) if args.train else builtin_collections(work)
        sets = scored_sets(test)
        for seed in map(int, args.seeds.split(",")):  # seeds outside, arms inside: drift hits every arm alike
            for arm in arms:
                reconstruct, seconds = (run_plain(args.steps, train, seed) if arm == "plain"
                                        else run_vaekit(arm, args.steps, train, test, work, seed))
                scores = {size: score(reconstruct, images) for size, images in sets.items()}
                results[arm].append({"seed": seed, "train_seconds": seconds, **scores})
                row = "  ".join(f"{size}²: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.3f} HF {m['hf_energy_ratio']:.2f}"
                                for size, m in scores.items())
                print(f"{arm:<22} seed {seed}  {row}  ({seconds:.0f} s)", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps({"steps": args.steps, "runs": results}, indent=2))
    summarise(results, list(sets), args.against)


if __name__ == "__main__":
    main()
