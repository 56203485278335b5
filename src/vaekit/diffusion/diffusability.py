"""The diffusability report: several image autoencoders side by side under one identical budget.

For each autoencoder, on the same images: its latents are normalised to unit standard deviation by the
one convention of ``models.latent_scale`` (1 / std of posterior samples, or per channel with
``per_channel``; the same rule for every VAE; a wrapped diffusers family keeps its own pipeline's
normalisation, what its diffusion model sees) and exported; reconstruction (PSNR, SSIM,
LPIPS where its weights are present) and equivariance errors are measured on the held-out images; the
latents' statistics and power spectrum are compared with the images'; and the same denoiser is trained
on its latents for the same steps with each seed, scored by held-out ε-MSE (overall and per timestep
bucket). Decoded samples are scored against the held-out images by the judge (``judge.py``: FD_DINOv2 and
FID where their weights download, a classifier's FD offline for labelled data), and the verdict
(``verdict.py``) says what the scores support; ``images.py`` provides the built-in images, ``page.py``
writes the tables and the page.

    vaekit diffusability VAE_A VAE_B ... --data IMAGES -o OUT
    vaekit diffusability configs/study-diffusability.yaml      # train the VAEs of a sweep, then compare
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from vaekit.config import build_dataclass, read_yaml
from vaekit.data.folder import folder_labels
from vaekit.diffusion.config import diffusion_config
from vaekit.diffusion.data import LatentsConfig, latents
from vaekit.diffusion.images import FolderImages, write_held_out_photos, write_objects
from vaekit.diffusion.judge import (DINOV2_MODEL, OBJECTS_IMAGES, Classifier, Judge, classifier_accuracy, folder_judge,
                                   in_class_order, objects_judge)
from vaekit.diffusion.page import write_report
from vaekit.diffusion.sampling import decode_latents, sample_latents
from vaekit.errors import ConfigError, VaekitError
from vaekit.evaluation import evaluate
from vaekit.io.layout import display_name
from vaekit.io.models import load_model, save_model
from vaekit.latents import LatentDataset, export_latents, open_source
from vaekit.losses.perceptual import WeightsUnavailable, make_lpips
from vaekit.metrics.image import per_image_psnr, ssim
from vaekit.metrics.latent import high_frequency_fraction, latent_signals, radial_power_spectrum
from vaekit.models.distributions import DiagonalGaussian
from vaekit.models.latent_scale import measure_latent_scale, store_latent_scale
from vaekit.sweep import sweep
from vaekit.training import train
from vaekit.viz.grids import save_grid, square_grid

log = logging.getLogger("vaekit")



@dataclass
class Budget:
    """What every autoencoder gets: the same images, denoiser, steps and seeds."""

    data: str = "photos"
    """A folder of images (labelled when they are in one sub-folder per class), ``photos`` (random crops of
    the built-in photographs) or ``objects`` (the built-in labelled colour objects)."""
    resolution: int | None = None
    """Image side. By default the smallest that gives every compared autoencoder latents of at least
    ``min_latent_side`` per side (an f = 8 autoencoder: 128)."""
    min_latent_side: int = 16
    """The smallest latent side a comparison may use: a resolution that gives less is refused. At f = 8 and
    32² a latent is 4 × 4, where every frequency counts as high (the spectral signals tie) and the denoiser's
    convolutions see the whole latent at once (a scrambled latent space is as easy as a real one)."""
    images: int = 1024
    """How many images to use when ``data`` is ``objects``; for ``photos``, at most this many (the held-out
    photographs give 520 tiles at 32², 120 at 64², 30 at 128²)."""
    test_fraction: float = 0.2
    steps: int = 500
    batch_size: int = 32
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Denoiser seeds: the verdict tests a difference with at least 4 values a side, and with 5 against 5
    two autoencoders wholly apart give p = 2/252, below 0.05 even after Holm's adjustment for 6 others."""
    unet: str = "unet-tiny"
    time_shift: float | Literal["auto", "none"] = "none"
    """The denoisers' noise-schedule shift (``model.time_shift``; RAE's, for wide latents), the same for every
    autoencoder: "auto" gives each its own α from its latents' size."""
    time_shift_base_dim: int = 4096
    """The latent size C·h·w at which "auto" gives α = 1 (``model.time_shift_base_dim``; RAE's 4 × 32 × 32, SD's
    latents at 256²). At another resolution, the size of a plain VAE's latents there keeps RAE's ratio."""
    lr: float = 1e-3
    samples: int = 128
    """Decoded samples per autoencoder and denoiser seed for the arbiter (FID/KID, or the classifier's
    Fréchet distance, precision and recall)."""
    per_channel: bool = False
    """Normalise every autoencoder's latents per channel (latents_mean / latents_std) instead of by one factor."""
    class_conditional: bool = False
    """Train class-conditional denoisers (labelled data): the arbiter also scores the classifier's accuracy on
    samples of each requested class."""
    dinov2: str = DINOV2_MODEL
    """The timm DINOv2 model of the FD_DINOv2 judge (downloaded on first use; "" leaves it out)."""
    control: bool = False
    """Add a control: the first autoencoder with its latent positions scrambled by a fixed permutation (the
    same reconstructions, no spatial structure left). The arbiter should rank it far below the original."""

    def __post_init__(self) -> None:
        if len(self.seeds) < 1 or self.steps < 1 or (self.resolution is not None and self.resolution < 8):
            raise ConfigError("the budget needs at least one seed, one step and a resolution of at least 8")
        if self.min_latent_side < 1:
            raise ConfigError(f"min_latent_side must be at least 1, got {self.min_latent_side}")


BUDGETS = {"quick": {"steps": 500, "seeds": (0, 1, 2, 3, 4), "samples": 128},
           "standard": {"steps": 2000, "seeds": (0, 1, 2, 3, 4), "samples": 256},
           "thorough": {"steps": 8000, "seeds": tuple(range(8)), "samples": 1000}}
"""Named budgets (``--budget``): what each denoiser gets. ``quick`` is the default; options given beside a
name replace its values."""


def make_budget(values: dict) -> Budget:
    """A ``Budget`` from ``values`` (a sweep config's ``diffusability:`` section with the command line's
    options over it), a named ``budget`` filling what they do not give."""
    values = dict(values)
    name = values.pop("budget", None)
    if name is not None:
        if name not in BUDGETS:
            raise ConfigError(f"unknown budget {name!r}: choose one of {', '.join(BUDGETS)}")
        values = {**BUDGETS[name], **values}
    if "seeds" in values:
        values["seeds"] = tuple(values["seeds"])
    return build_dataclass(Budget, values, "diffusability")


def _downsampling(path: str) -> int:
    """The downsampling factor f of the latents the denoiser sees from the image autoencoder at ``path``
    (FLUX.2's 2 × 2 patches double its autoencoder's); an error for any other model."""
    model = load_model(path)
    if model.kind != "autoencoder" or model.latent_layout != "spatial":
        raise VaekitError(f"{path} holds a {model.registry_name}; the diffusability report compares image autoencoders")
    return model.downsampling_factor * model.latent_norm.patch_size


def resolve_resolution(budget: Budget, factors: dict[str, int]) -> Budget:
    """``budget`` with its resolution: by default ``min_latent_side`` × the largest downsampling factor of
    ``factors`` (autoencoder → f); a given one that leaves some autoencoder a smaller latent is refused."""
    largest = max(factors.values())
    if budget.resolution is None:
        resolution = budget.min_latent_side * largest
        log.info("diffusability: resolution %d² (f = %d gives %d × %d latents)", resolution, largest,
                 budget.min_latent_side, budget.min_latent_side)
        return dataclasses.replace(budget, resolution=resolution)
    small = {path: budget.resolution // f for path, f in factors.items() if budget.resolution // f < budget.min_latent_side}
    if small:
        path, side = min(small.items(), key=lambda item: item[1])  # the worst one
        raise VaekitError(
            f"--resolution {budget.resolution} gives {path} {side} × {side} latents (f = {factors[path]}), fewer than "
            f"{budget.min_latent_side} a side: every latent frequency counts as high and the denoiser sees the whole "
            f"latent at once, so the comparison says little. Use --resolution {budget.min_latent_side * largest} or "
            f"more (or leave it out), or lower --min-latent-side to compare at this size anyway")
    return budget

def _image_folder(budget: Budget, out: Path) -> Path:
    if budget.data not in ("photos", "objects"):
        folder = Path(budget.data)
        if not folder.is_dir():
            raise VaekitError(f"--data {budget.data}: no such folder (or give photos or objects for built-in images)")
        return folder
    folder = out / "images"
    if not folder.is_dir():
        if budget.data == "photos":
            write_held_out_photos(folder, budget.resolution, budget.images)
        else:
            write_objects(folder, budget.resolution, budget.images)
    return folder


@torch.no_grad()
def _encoded(vae, images: torch.Tensor) -> DiagonalGaussian:
    """The posterior of ``images`` (unscaled), encoded 32 at a time."""
    parts = [vae.encode(images[i:i + 32]) for i in range(0, len(images), 32)]
    return DiagonalGaussian(torch.cat([p.mean for p in parts]), torch.cat([p.logvar for p in parts]),
                            deterministic=parts[0].deterministic)


def _unit_scaled_copy(vae, images: torch.Tensor, target: Path, per_channel: bool):
    """The VAE calibrated on ``images`` by the one convention (posterior samples; no shift), saved."""

    batches = (images[i:i + 32] for i in range(0, len(images), 32))
    measured = measure_latent_scale(vae, batches, torch.Generator().manual_seed(0), per_channel=per_channel)
    store_latent_scale(vae, measured.norm)
    save_model(vae, target)
    return vae


def _held_out_images(latents_dir: Path, readable: FolderImages,
                     budget: Budget) -> tuple[torch.Tensor, list[str]]:
    """The images of the export's held-out split (the one the denoiser is scored on), taken from the images
    already read, and their names in the same order."""
    test = latents(LatentsConfig(str(latents_dir), budget.test_fraction), "test")
    sources = [test.latents.items[i][1]["source"] for i in test.items]
    return readable.read(sources)


def _reconstruction(vae, images: torch.Tensor, z: torch.Tensor) -> dict:
    """PSNR, SSIM (and LPIPS where its weights are present) of ``images`` decoded from their latents ``z``
    (posterior means)."""

    with torch.no_grad():
        out = torch.cat([vae.decode(z[i:i + 32]).clamp(-1, 1) for i in range(0, len(z), 32)])
        metrics = {"psnr": per_image_psnr(out, images).mean().item(), "ssim": ssim(out, images).mean().item()}
        try:
            lpips = make_lpips(pretrained_backbone=True).to(images.device)
            metrics["lpips"] = torch.cat([lpips(out[i:i + 32], images[i:i + 32]).flatten()
                                          for i in range(0, len(images), 32)]).mean().item()
        except WeightsUnavailable as err:
            metrics["lpips"], metrics["lpips_unavailable"] = None, str(err)
    return metrics


def _latent_statistics(vae, images: torch.Tensor, posterior: DiagonalGaussian) -> tuple[dict, tuple]:
    """Statistics and spectrum of what the denoiser trains on: normalised posterior samples of ``images``
    (one seeded draw), per channel too, so that channels of different scales show."""

    latents = vae.scale_latents(posterior.sample(torch.Generator(device=images.device).manual_seed(0)))
    f = images.shape[-1] // latents.shape[-1]
    small = torch.nn.functional.avg_pool2d(images, f)  # the images at the latents' resolution
    norm = vae.latent_norm
    stats = {"scaling_factor": norm.scaling_factor, "per_channel_norm": norm.per_channel,
             "latent_std": latents.double().std().item(),
             "latent_channel_mean": latents.mean(dim=(0, 2, 3)).tolist(),
             "latent_channel_std": latents.std(dim=(0, 2, 3)).tolist(),
             "latent_channel_std_range": "{:.3g}–{:.3g}".format(*latents.std(dim=(0, 2, 3)).aminmax()),
             "image_hf_fraction": high_frequency_fraction(small),
             "compression_ratio": images[0].numel() / latents[0].numel(),
             "latent_shape": list(latents.shape[1:])}
    return stats, (radial_power_spectrum(latents), radial_power_spectrum(small))


def _denoiser(latents_dir: Path, budget: Budget, seed: int, runs: Path, name: str, device) -> dict:
    config = diffusion_config(str(latents_dir), None, [
        f"model.name={budget.unet}", f"train.max_steps={budget.steps}", "train.epochs=100000",
        f"train.batch_size={budget.batch_size}", f"train.lr={budget.lr}", "train.validate_every=100000",
        "train.snapshot_examples=0", f"train.checkpoint_every={max(budget.steps // 2, 1)}", "train.progress_bar=false",
        f"data.test_fraction={budget.test_fraction}", f"seed={seed}", f"output_dir={runs}", f"run_name={name}-seed{seed}",
        f"model.class_conditional={str(budget.class_conditional).lower()}", f"model.time_shift={budget.time_shift}",
        f"model.time_shift_base_dim={budget.time_shift_base_dim}"])
    run = train(config, evaluate_at_end=False, explore=False, device=str(device))
    return {"run": run, **evaluate(run, device=str(device))}


def _samples(run: Path, vae, manifest: dict, count: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decoded samples of a denoiser (50 DDIM steps, noise seed 0) and the classes asked for (conditional)."""
    latents, labels = sample_latents(load_model(run, device=device).eval(), count, steps=50, seed=0, device=device)
    return decode_latents(vae, latents, manifest), labels


def _classifier(budget: Budget, readable: FolderImages, held_out: torch.Tensor,
                held_out_names: list[str], device) -> Classifier | None:
    """The judge's classifier of the data's labels (the images' sub-folders; None for unlabelled data): for
    the built-in objects, the one trained on their own stream; for a folder, one trained on its images that
    are not held out. Its accuracy is measured on the held-out images."""
    names = [name for name in readable.names if name not in readable.unreadable]
    labels, classes = folder_labels(names)
    if labels is None:
        return None
    label_of = dict(zip(names, labels.tolist()))
    held_labels = torch.as_tensor([label_of[name] for name in held_out_names])
    if budget.data == "objects":  # its classes in the folder's (sorted) order, not the generator's
        from vaekit.data.objects import CLASS_NAMES

        model = in_class_order(objects_judge(budget.resolution, device), list(CLASS_NAMES), list(classes))
        trained_on = f"{OBJECTS_IMAGES:,} objects of their own stream at {budget.resolution}²"
    else:
        train = [name for name in names if name not in set(held_out_names)]
        images, train = readable.read(train)
        model = folder_judge(images, torch.as_tensor([label_of[n] for n in train]), len(classes), device)
        trained_on = f"{len(train)} of the folder's images (early-stopped on a tenth of them)"
    accuracy = classifier_accuracy(model, held_out.to(model.mean.device), held_labels)
    classifier = Classifier(model, accuracy, len(classes), trained_on)
    log.info("diffusability: %s", classifier.describe())
    return classifier


NOISE_STD = 0.2
"""The std of the Gaussian noise added to unit-std latents for ``latent_noise_psnr_drop``."""


def _decoded(vae, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([vae.decode(z[i:i + 32]).clamp(-1, 1) for i in range(0, len(z), 32)])


def _interpolations(vae, mean: torch.Tensor) -> torch.Tensor:
    """The decoded midpoints between each latent (posterior mean) and its nearest other one, in the
    normalised latent space (iFID's nearest-neighbour interpolations, at t = ½)."""
    z = vae.scale_latents(mean)
    flat = z.flatten(1)
    distance = torch.cdist(flat, flat)
    distance.fill_diagonal_(float("inf"))
    midpoints = 0.5 * (z + z[distance.argmin(dim=1)])
    return _decoded(vae, vae.unscale_latents(midpoints))


def _noise_drop(vae, images: torch.Tensor, mean: torch.Tensor, psnr: float) -> float:
    """PSNR lost by decoding the normalised latents with Gaussian noise of std NOISE_STD added (seed 0)."""
    z = vae.scale_latents(mean)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0)).to(z.device)
    noisy = _decoded(vae, vae.unscale_latents(z + NOISE_STD * noise))
    return psnr - per_image_psnr(noisy, images).mean().item()


def _signals(vae, images: torch.Tensor, judge: Judge) -> tuple[dict, tuple]:
    """The cheap signals of ``images`` (on the VAE's device): reconstruction, latent statistics, spectra,
    the latent signals validation logs too (``latent_signals``), interpolation and robustness to latent noise."""
    posterior = _encoded(vae, images)
    row = _reconstruction(vae, images, posterior.mean)
    stats, spectra = _latent_statistics(vae, images, posterior)
    row.update(stats)
    row.update(latent_signals(vae, images, baseline=True))
    row["interpolation_fd"] = judge.frechet(_interpolations(vae, posterior.mean).cpu())
    row["latent_noise_psnr_drop"] = _noise_drop(vae, images, posterior.mean, row["psnr"])
    return row, spectra


def _control(first: str, out: Path) -> str:
    """The first autoencoder with its latent positions scrambled (``model.latent_permutation``), saved."""
    vae = load_model(first)
    if vae.registry_name != "autoencoder-kl":
        raise VaekitError(f"the control scrambles a KL autoencoder's latents; {first} holds a {vae.registry_name}")
    fields = {**dataclasses.asdict(vae.config), "latent_permutation": 1}
    control = type(vae)(type(vae.config)(**fields))
    control.load_state_dict(vae.state_dict())
    target = out / "controls" / f"{display_name(first, set())}-permuted"
    save_model(control, target)
    return str(target)


@dataclass
class _Shared:
    """What every autoencoder of one comparison is measured with."""

    budget: Budget
    out: Path
    folder: Path
    readable: FolderImages
    calibration: torch.Tensor
    device: torch.device | str
    judge: Judge | None = None


def _seed_scores(row: dict, per_seed: list[dict]) -> None:
    """Each arbiter score's mean over the denoiser seeds, its per-seed values and their spread."""
    for key in per_seed[0]:
        values = [scores[key] for scores in per_seed]
        if any(v is None for v in values):
            row[key] = None
            continue
        row.update({key: statistics.fmean(values), f"{key}_seeds": values, f"{key}_spread": max(values) - min(values)})


def _measure(path: str, name: str, shared: _Shared) -> tuple[dict, tuple]:
    """One autoencoder: calibrate, export, cheap signals, a denoiser per seed and the arbiter's scores."""
    budget, out, device = shared.budget, shared.out, shared.device
    vae = load_model(path, device=device).eval()
    log.info("diffusability: %s", name)
    source = path
    if vae.registry_name == "diffusers":  # a wrapped family's latents are its pipeline's, as its denoiser sees them
        log.info("diffusability: %s keeps its family's normalisation (%s)", name, vae.latent_norm.describe())
    else:
        vae, source = _unit_scaled_copy(vae, shared.calibration, out / "vaes" / name, budget.per_channel), out / "vaes" / name
    latents_dir = out / "latents" / name
    export_latents(vae, str(shared.folder), latents_dir, resolution=budget.resolution, batch_size=32,
                   model_source=source)
    held_out, held_out_names = _held_out_images(latents_dir, shared.readable, budget)
    if shared.judge is None:  # the held-out images are the same for every autoencoder: one judge serves all
        shared.judge = _judge(budget, shared.readable, held_out, held_out_names, device)
    signals, spectra = _signals(vae, held_out.to(device), shared.judge)
    factor = vae.downsampling_factor * vae.latent_norm.patch_size  # of the latents the denoiser sees
    row = {"vae": name, "source": str(path), "downsampling_factor": factor, **signals}
    results = [_denoiser(latents_dir, budget, seed, out / "runs", name, device) for seed in budget.seeds]
    eps = [r["eps_mse"] for r in results]
    row.update(eps_mse=statistics.fmean(eps), eps_mse_seeds=eps, eps_mse_spread=max(eps) - min(eps),
               eps_mse_by_timestep=[statistics.fmean(b) for b in zip(*(r["eps_mse_by_timestep"] for r in results))],
               timestep_buckets=results[0]["timestep_buckets"])
    manifest = LatentDataset(latents_dir).manifest
    per_seed = []
    for i, result in enumerate(results):
        samples, labels = _samples(result["run"], vae, manifest, budget.samples, device)
        if i == 0:
            save_grid(out / f"samples-{name}.png", square_grid(samples[:16]), value_range=(-1.0, 1.0))
        per_seed.append(shared.judge.scores(samples.cpu(), labels))
    _seed_scores(row, per_seed)
    row.update(shared.judge.floor, scored_samples=shared.judge.sample_size)
    if shared.judge.inception_reason:
        row["sample_fid_unavailable"] = shared.judge.inception_reason
    return row, spectra


SMALL_HELD_OUT = 64
"""Fewer held-out images than this, and the report warns that its distances are noisy."""


def _judge(budget: Budget, readable: FolderImages, held_out: torch.Tensor, held_out_names: list[str],
           device) -> Judge:
    """The comparison's judge: the held-out images its reference; as many real images disjoint from them as
    there are samples (the denoisers' training images) for the real-vs-real floor."""
    others = readable.spread(budget.samples, excluding=set(held_out_names))
    if len(others) < budget.samples or len(held_out) < SMALL_HELD_OUT:
        log.warning("diffusability: %d held-out images and %d others for the real-vs-real floor, so %d samples are "
                    "scored of the %d asked for: the distances are noisy at this size; give a folder with more "
                    "images (or more --images of the built-in objects)", len(held_out), len(others), len(others),
                    budget.samples)
    classifier = _classifier(budget, readable, held_out, held_out_names, device)
    return Judge.load(held_out, others, classifier, device, budget.dinov2 or None)


def compare(vaes: list[str], budget: Budget, output: str | Path, device: str | torch.device = "cpu") -> Path:
    """Run the comparison; returns the HTML page (``diffusability.csv`` and ``.json`` beside it, the verdict
    first in each). Every model (the autoencoders, the denoisers) runs on ``device``."""

    if len(vaes) < 1:
        raise VaekitError("give at least one autoencoder to measure (two or more to compare)")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    budget = resolve_resolution(budget, {path: _downsampling(path) for path in vaes})
    folder = _image_folder(budget, out)
    readable = FolderImages(folder, open_source(str(folder)).names, budget.resolution)
    shared = _Shared(budget, out, folder, readable, readable.spread(256), device)
    paths = list(vaes) + ([_control(vaes[0], out)] if budget.control else [])
    rows, spectra, taken = [], {}, set()
    for path in paths:
        name = display_name(path, taken)
        row, spectra[name] = _measure(path, name, shared)
        rows.append(row)
    return write_report(out, rows, spectra, budget, shared.judge)


def sweep_then_compare(config_path: str | Path, output: str | Path | None = None,
                       device: str | torch.device = "cpu", overrides: dict | None = None) -> Path:
    """Train the autoencoders of a sweep config (its ``sweep:`` grid), then compare them with the budget in
    its ``diffusability:`` section, where ``overrides`` (the command line's) replace its values."""
    import yaml

    raw = read_yaml(config_path)
    budget = make_budget({**(raw.pop("diffusability", {}) or {}), **(overrides or {})})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(raw, f)
    # the comparison is the report here: each run's own figures are left for `vaekit explore RUN` to draw
    sweep_dir = sweep(f.name, [], output_dir=None if output is None else str(Path(output) / "vaes-trained"),
                      device=str(device), explore=False).parent
    Path(f.name).unlink()
    trained = sorted(str(p.parent) for p in sweep_dir.glob("*/model/config.json"))
    if not trained:
        raise VaekitError(f"no run of the sweep in {sweep_dir} finished: nothing to compare")
    return compare(trained, budget, output or sweep_dir / "diffusability", device)


def budget_overrides(args) -> dict:
    """The budget fields the command line gave (an option left out is None): they override the defaults and
    a sweep config's ``diffusability:`` section alike."""
    given = {name: getattr(args, name, None) for name in ("budget", *(f.name for f in dataclasses.fields(Budget)))}
    given = {name: value for name, value in given.items() if value is not None}
    if "seeds" in given:
        given["seeds"] = tuple(int(s) for s in str(given["seeds"]).split(","))
    return given


