"""Metrics: pure functions of a model and data, each tested against an independent reference."""

from vaekit.metrics.likelihood import evaluate_likelihood, iwae_log_likelihood

__all__ = ["evaluate_likelihood", "iwae_log_likelihood"]
