"""``vaekit.evaluate(run_dir)``: test-set metrics of a trained run, written to its metrics.json."""

from __future__ import annotations

from pathlib import Path



from vaekit.data import build_dataset
from vaekit.metrics.image import evaluate_reconstruction
from vaekit.metrics.likelihood import evaluate_likelihood
from vaekit.io.models import load_model
from vaekit.progress import resolve_device
from vaekit.runs import read_run_config, update_metrics
from vaekit.data.ranges import range_map


DENOISER_DRAWS = 20
"""(t, ε) draws per held-out latent when a denoiser is evaluated (stratified over the timesteps)."""


def evaluate(run_dir: str | Path, iwae_samples: int | None = None, device: str | None = "auto") -> dict:
    """Evaluate the run's model on its test split; returns (and stores under "test") the metrics.

    ``iwae_samples`` overrides the run's ``eval.iwae_samples`` (0 skips the IWAE bound).
    """
    config = read_run_config(run_dir)
    device = resolve_device(device)
    model = load_model(run_dir, device=device)
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
    update_metrics(run_dir, "test", metrics)
    return metrics
