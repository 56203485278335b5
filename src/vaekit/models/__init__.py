"""Models, registered by name in ``vaekit.registry.MODELS``."""

from vaekit.models import autoencoder_kl, mlp  # noqa: F401  (registers the models and presets)
from vaekit.models.distributions import Bernoulli, DiagonalGaussian

__all__ = ["Bernoulli", "DiagonalGaussian"]
