from __future__ import annotations

import pytest


def tiny_overrides(tmp_path, **extra) -> list[str]:
    """Overrides for a run that trains in about a second on 2 CPU cores; ``key=None`` drops a key."""
    values = {
        "output_dir": str(tmp_path / "runs"),
        "data.num_train": 256,
        "data.num_test": 64,
        "model.hidden_dims": "[32]",
        "model.latent_dim": 3,
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.lr": 3e-3,
        "train.log_every": 4,
        "train.checkpoint_every": 5,
        "train.progress_bar": "false",
        "eval.iwae_samples": 8,
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items() if value is not None]


@pytest.fixture
def tiny(tmp_path):
    def make(**extra):
        from vaekit.config import load_config

        return load_config(None, tiny_overrides(tmp_path, **extra))

    return make
