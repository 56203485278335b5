"""``vaekit.evaluate(run_dir)``: test-set metrics of a trained run, written to its metrics.json; and
``evaluate_model(model, folder)``: any image autoencoder (a vaekit folder or run, a diffusers folder, an
LDM/SD checkpoint, a hub name) scored on any folder of images."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from vaekit.data import build_dataset
from vaekit.data.folder import whole_folder
from vaekit.errors import VaekitError
from vaekit.metrics.latent import latent_signals
from vaekit.metrics.image import evaluate_reconstruction
from vaekit.metrics.likelihood import evaluate_likelihood
from vaekit.io.models import load_model
from vaekit.progress import resolve_device
from vaekit.runs import BEST_DIR, read_run_config, update_metrics
from vaekit.data.ranges import range_map


DENOISER_DRAWS = 20
"""(t, ε) draws per held-out latent when a denoiser is evaluated (stratified over the timesteps)."""


def evaluate(run_dir: str | Path, iwae_samples: int | None = None, device: str | None = "auto") -> dict:
    """Evaluate the run's final model on its test split; returns (and stores under "test") the metrics. When
    the run kept its best weights (``best/``, the ones a user exports), they are scored on the same split
    too and stored under "test_best" (the same numbers, not computed again, when best/ is the final step's).

    ``iwae_samples`` overrides the run's ``eval.iwae_samples`` (0 skips the IWAE bound).
    """
    metrics = _evaluate_weights(run_dir, run_dir, iwae_samples, device)
    stored = update_metrics(run_dir, "test", metrics)
    best = Path(run_dir) / BEST_DIR
    if (best / "best.json").is_file():
        final_step = stored.get("train", {}).get("steps")
        same = final_step is not None and json.loads((best / "best.json").read_text())["step"] == final_step
        update_metrics(run_dir, "test_best", metrics if same else _evaluate_weights(run_dir, best, iwae_samples, device))
    return metrics


def _evaluate_weights(run_dir: str | Path, weights: str | Path, iwae_samples: int | None, device) -> dict:
    """The metrics of the model at ``weights`` on the test split of the run at ``run_dir``."""
    config = read_run_config(run_dir)
    device = resolve_device(device)
    model = load_model(weights, device=device)
    test_data = build_dataset(config.data, "test")
    if model.kind == "denoiser":  # Stage B: the held-out denoising error, overall and per timestep bucket
        from vaekit.diffusion.evaluation import held_out_eps_mse

        metrics = {"num_examples": len(test_data),
                   **held_out_eps_mse(model, test_data, draws=DENOISER_DRAWS, seed=config.seed,
                                      batch_size=config.eval.batch_size, device=device, show_progress=True)}
    elif not model.has_likelihood:  # an image autoencoder: scored by image metrics
        metrics = evaluate_reconstruction(model, test_data, seed=config.seed, device=device,
                                          to_model_range=range_map(test_data.value_range, model.value_range))
    else:
        metrics = evaluate_likelihood(
            model,
            test_data,
            batch_size=config.eval.batch_size,
            iwae_samples=config.eval.iwae_samples if iwae_samples is None else iwae_samples,
            active_unit_threshold=config.eval.active_unit_threshold,
            seed=config.seed,
            device=device,
        )
    return metrics


def evaluate_model(source: str | Path, data: str | Path, resolution: int = 256, batch_size: int = 8,
                   device: str | None = "auto", seed: int = 0, model=None, dataset=None) -> dict:
    """Any image autoencoder ``source`` scored on every image of the folder ``data`` (short side resized to
    ``resolution``, centre crop): reconstruction (PSNR, SSIM, LPIPS, rFID where their weights download),
    latent shape, compression ratio and statistics, the cheap latent signals (``latent_signals`` on up to 64
    images: HF fraction, ×0.5 and 90° equivariance errors), encode and decode time per image, and memory.
    ``model``: ``source`` already loaded on ``device``; ``dataset``: ``whole_folder(data, resolution)`` already
    built (several models scored on one folder then decode each file once)."""
    device = resolve_device(device)
    model = model if model is not None else load_model(source, device=device)
    if model.kind != "autoencoder" or model.latent_layout != "spatial":
        raise VaekitError(f"{source} holds a {model.registry_name}: vaekit eval --model scores image autoencoders "
                          "(a run directory of any model is scored by `vaekit eval RUN_DIR`)")
    dataset = dataset if dataset is not None else whole_folder(data, resolution)
    if len(dataset) == 0:
        raise VaekitError(f"{data} has no images")
    to_model_range = range_map(dataset.value_range, model.value_range)
    metrics = {"model": str(source), "data": str(data), "resolution": resolution, "num_examples": len(dataset),
               **evaluate_reconstruction(model, dataset, batch_size=batch_size, seed=seed, device=device,
                                         to_model_range=to_model_range)}
    images = to_model_range(dataset.__getitems__(list(range(min(64, len(dataset)))))[0].to(device))
    with torch.no_grad():
        metrics["latent_shape"] = list(model.encode(images[:1]).mean.shape[1:])
        metrics.update(latent_signals(model, images, baseline=False, seed=seed))
    metrics.update(_speed_and_memory(model, images[:batch_size], device))
    return metrics


@torch.no_grad()
def _speed_and_memory(model, images: torch.Tensor, device: torch.device, rounds: int = 3) -> dict:
    """Median encode and decode time per image over ``rounds`` (after a warm-up), and the peak memory of
    one batch: measured on CUDA (``torch.cuda.max_memory_allocated``), estimated elsewhere (the activations
    of the model's own operations, ``models.memory``; the weights not counted)."""
    from vaekit.models.memory import reconstruction_bytes_per_image

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    z = model.encode(images).mode()
    model.decode(z)
    encode, decode = [], []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        z = model.encode(images).mode()
        sync()
        middle = time.perf_counter()
        model.decode(z)
        sync()
        encode.append(middle - start)
        decode.append(time.perf_counter() - middle)
    out = {"encode_s_per_image": statistics.median(encode) / len(images),
           "decode_s_per_image": statistics.median(decode) / len(images), "timed_batch": len(images)}
    if cuda:
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        try:
            out["estimated_memory_mb"] = reconstruction_bytes_per_image(model, tuple(images.shape[1:])) * len(images) / 2**20
        except (RuntimeError, NotImplementedError) as err:  # an operation the meta device cannot run
            out["estimated_memory_mb"] = None
            out["memory_note"] = f"not estimated: the model does not run on the meta device ({str(err)[:120]})"
    return out
