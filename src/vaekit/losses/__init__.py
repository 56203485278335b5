"""Losses, registered by name in ``vaekit.registry.LOSSES``. Each returns ``(loss, logs)``."""

from vaekit.losses.elbo import ELBOLoss
from vaekit.losses.lpips_gan import LPIPSGANConfig, LPIPSWithDiscriminator
from vaekit.losses.schedules import learning_rate_factor, linear_warmup

__all__ = ["ELBOLoss", "LPIPSGANConfig", "LPIPSWithDiscriminator", "learning_rate_factor", "linear_warmup"]
