"""Training loop, checkpoints."""

from vaekit.training.trainer import TrainingInterrupted, train

__all__ = ["TrainingInterrupted", "train"]
