"""Losses, registered by name in ``vaekit.registry.LOSSES``. Each returns ``(loss, logs)``."""

from vaekit.losses.elbo import ELBOLoss, PixelKLLoss
from vaekit.losses.schedules import linear_warmup

__all__ = ["ELBOLoss", "PixelKLLoss", "linear_warmup"]
