"""Models, registered by name in ``vaekit.registry.MODELS``."""

from vaekit.models import mlp  # noqa: F401  (registers mlp-vae, mlp-ae, cvae, beta-vae)
from vaekit.models.distributions import Bernoulli, DiagonalGaussian

__all__ = ["Bernoulli", "DiagonalGaussian"]
