"""Losses, registered by name in ``vaekit.registry.LOSSES``. Each returns ``(loss, logs)``."""

from vaekit.losses.elbo import ELBOLoss
from vaekit.losses.lpips_gan import LPIPSGANConfig, LPIPSWithDiscriminator
from vaekit.losses.schedules import linear_warmup

__all__ = ["ELBOLoss", "LPIPSGANConfig", "LPIPSWithDiscriminator", "linear_warmup"]
