"""``vaekit.evaluate(run_dir)``: test-set metrics of a trained run, written to its metrics.json."""

from __future__ import annotations

from pathlib import Path

import torch

from vaekit.data import build_dataset
from vaekit.metrics.likelihood import evaluate_likelihood
from vaekit.models.io import load_model
from vaekit.runs import read_run_config, update_metrics


def evaluate(run_dir: str | Path, iwae_samples: int | None = None, device: str | None = None) -> dict:
    """Evaluate the run's model on its test split; returns (and stores under "test") the metrics.

    ``iwae_samples`` overrides the run's ``eval.iwae_samples`` (0 skips the IWAE bound).
    """
    config = read_run_config(run_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(run_dir, device=device)
    test_data = build_dataset(config.data, "test")
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
