"""The run config of a Stage B denoiser: vaekit's defaults for it, a config file, overrides, and the
latents to train on (what ``vaekit diffusion train`` and the diffusability report build)."""

from __future__ import annotations

from vaekit.config import build_run_config, merge, parse_overrides, read_yaml
from vaekit.errors import ConfigError, VaekitError
from vaekit.registry import MODELS

DEFAULTS = ["model.name=unet-tiny", "train.epochs=40", "train.batch_size=32", "train.lr=3e-4",
            "train.lr_warmup_steps=100", "train.ema_decay=0.999", "train.grad_clip=1.0", "train.checkpoint_every=500",
            "train.validate_every=250", "train.snapshot_examples=16", "train.calibrate_latents=never",
            "explore.num_examples=16"]
"""What ``vaekit diffusion train`` starts from, before the config file and the overrides: the tiny U-Net
(minutes on a CPU), AdamW at 3e-4 after a warm-up, EMA 0.999, gradients clipped at 1 (the usual
latent-diffusion settings), 16 sample snapshots per epoch."""


def diffusion_config(latents: str, config_path: str | None, overrides: list[str]):
    """The run config of ``vaekit diffusion train LATENTS [CONFIG] [OVERRIDES]``: ``DEFAULTS``, then the
    file, then the overrides, with the data set to the export at ``latents``."""
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise VaekitError(f"expected LATENTS_DIR, an optional config file, then key=value overrides; got {bad[0]!r}")
    raw = merge(parse_overrides(DEFAULTS), read_yaml(config_path) if config_path else {})
    raw = merge(raw, parse_overrides([*overrides, "data.name=latents", f"data.path={latents}"]))
    config = build_run_config(raw)
    if MODELS.get(config.model.name).obj.kind != "denoiser":
        raise ConfigError(f"vaekit diffusion train trains a denoiser, not {config.model.name}: model.name must be "
                          "latent-unet or a preset of it (unet-tiny, unet-small, unet-wide, unet-sd)")
    return config


