"""Stage B: a diffusion model trained on a VAE's exported latents (``vaekit diffusion train``), its
samples decoded through that VAE (``vaekit diffusion sample``), and the metrics that say how well a latent
space diffuses."""

from vaekit.diffusion import data, loss, model  # noqa: F401  (registers latent-unet, diffusion, latents)
from vaekit.diffusion.model import DenoiserConfig, LatentDenoiser

__all__ = ["DenoiserConfig", "LatentDenoiser"]
