"""Models, registered by name in ``vaekit.registry.MODELS``."""

from torch import nn

from vaekit.config import build_dataclass
from vaekit.models import autoencoder_kl, mlp, rae, vq  # noqa: F401  (registers the models and presets)
from vaekit.models.distributions import Bernoulli, ContinuousBernoulli, DiagonalGaussian
from vaekit.registry import MODELS


def create_model(name: str, **config) -> nn.Module:
    """Build a registered model or preset, e.g. ``create_model("mlp-vae", input_shape=(1, 16, 16))``."""
    entry = MODELS.get(name)
    return entry.obj(build_dataclass(entry.config_cls, {**entry.defaults, **config}, "model"))


__all__ = ["Bernoulli", "ContinuousBernoulli", "DiagonalGaussian", "create_model"]
