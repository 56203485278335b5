"""Stage B's options for wide latents (RAE's, issue 33): the dimension-dependent noise-schedule shift, checked
against RAE's closed form on its linear flow path, and a denoiser at least as wide as a token."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from vaekit.diffusion.model import DenoiserConfig, LatentDenoiser, time_shift
from vaekit.errors import ConfigError


def _denoiser(**values) -> LatentDenoiser:
    settings = {"sample_size": 8, "in_channels": 4, "block_out_channels": (32, 64), "norm_num_groups": 8,
                "layers_per_block": 1, **values}
    return LatentDenoiser(DenoiserConfig(**settings))


def rae_shifted_alphas_cumprod(alphas_cumprod: torch.Tensor, alpha: float) -> torch.Tensor:
    """RAE's shift written out on its own terms: each timestep's ᾱ read as the time t of the linear path
    x_t = (1 − t)·x + t·ε with the same signal-to-noise ratio (t = √(1 − ᾱ) / (√ᾱ + √(1 − ᾱ))), shifted by
    t → α·t / (1 + (α − 1)·t) (bytetriper/RAE src/stage2/transport/transport.py), and read back as ᾱ."""
    signal, noise = alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()
    t = noise / (signal + noise)
    shifted = alpha * t / (1 + (alpha - 1) * t)
    return (1 - shifted) ** 2 / ((1 - shifted) ** 2 + shifted ** 2)


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "squaredcos_cap_v2"])
def test_the_auto_time_shift_is_raes_closed_form_in_training_and_both_samplers(beta_schedule):
    base = _denoiser(in_channels=64, beta_schedule=beta_schedule)
    shifted = _denoiser(in_channels=64, beta_schedule=beta_schedule, time_shift="auto", time_shift_base_dim=1024)
    alpha = math.sqrt(64 * 8 * 8 / 1024)
    assert time_shift(shifted.config) == alpha == 2.0
    expected = rae_shifted_alphas_cumprod(base.scheduler.alphas_cumprod.double(), alpha)
    for scheduler in (shifted.scheduler, shifted.noise_scheduler("ddim", 10), shifted.noise_scheduler("ddpm")):
        torch.testing.assert_close(scheduler.alphas_cumprod.double(), expected, rtol=1e-5, atol=1e-6)
    # The noise the denoiser trains on is drawn at the shifted levels: c_t = √ᾱ'·c₀ + √(1 − ᾱ')·ε.
    c0, eps, t = torch.randn(3, 64, 8, 8), torch.randn(3, 64, 8, 8), torch.tensor([10, 500, 990])
    a = expected[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(shifted.add_noise(c0, eps, t), a.sqrt() * c0 + (1 - a).sqrt() * eps)
    # Every SNR is divided by α² = 4: more noise at every timestep.
    snr = lambda ab: ab / (1 - ab)  # noqa: E731
    torch.testing.assert_close(snr(expected[:-1]), snr(base.scheduler.alphas_cumprod.double()[:-1]) / 4)


def test_the_shift_is_off_by_default_auto_never_goes_below_one_and_a_number_is_alpha():
    default, plain = _denoiser(), _denoiser(time_shift="none")
    assert default.config.time_shift == "none"
    assert torch.equal(default.scheduler.betas, plain.scheduler.betas)
    from diffusers import DDPMScheduler

    diffusers_default = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                      beta_end=0.012)
    assert torch.equal(default.scheduler.alphas_cumprod, diffusers_default.alphas_cumprod)
    assert time_shift(_denoiser(time_shift="auto").config) == 1.0  # 4·8·8 = 256 < 4096: RAE asserts α ≥ 1
    wide = DenoiserConfig(time_shift="auto", in_channels=768, sample_size=16)
    assert time_shift(wide) == pytest.approx(math.sqrt(768 * 16 * 16 / 4096))  # DINOv2-B's RAE: 6.93
    three = _denoiser(time_shift=3.0)
    torch.testing.assert_close(three.scheduler.alphas_cumprod.double(),
                               rae_shifted_alphas_cumprod(default.scheduler.alphas_cumprod.double(), 3.0),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="time_shift must be positive"):
        DenoiserConfig(time_shift=0.0)


def test_the_time_shift_option_parses_from_the_command_line_and_a_bad_value_is_named(tmp_path):
    from vaekit.config import build_run_config, parse_overrides

    config = build_run_config(parse_overrides(["model.name=unet-tiny", "model.time_shift=auto"]))
    assert config.model.params.time_shift == "auto"
    config = build_run_config(parse_overrides(["model.name=unet-tiny", "model.time_shift=2.5"]))
    assert config.model.params.time_shift == 2.5
    with pytest.raises(ConfigError, match="time_shift"):
        build_run_config(parse_overrides(["model.name=unet-tiny", "model.time_shift=sometimes"]))


def test_a_denoiser_narrower_than_the_latents_warns_and_unet_wide_is_as_wide_as_a_token(caplog):
    from vaekit.registry import MODELS

    with caplog.at_level(logging.WARNING, logger="vaekit"):
        _denoiser(in_channels=64)
    assert "first level is 32 channels wide and the latents have 64" in caplog.text
    assert "unet-wide" in caplog.text
    caplog.clear()
    entry = MODELS.get("unet-wide")
    params = entry.config_cls(**entry.defaults)
    for channels, widths in ((64, (64, 128)), (100, (128, 256)), (768, (768, 1536)), (4, None)):
        updates = LatentDenoiser.config_for_data(params, (channels, 8, 8), None, "latents")
        assert updates.get("block_out_channels") == widths
    updates = LatentDenoiser.config_for_data(params, (64, 8, 8), None, "latents")
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        wide = LatentDenoiser(entry.config_cls(**{**entry.defaults, **updates}))
    assert wide.unet.config.block_out_channels == (64, 128) and "narrower" not in caplog.text
    assert LatentDenoiser.config_for_data(entry.config_cls(), (64, 8, 8), None, "latents").get(
        "block_out_channels") is None  # unet-tiny's defaults: not widened, only warned about


def test_the_diffusability_base_dim_reaches_every_denoiser_and_sets_auto_alpha(tmp_path, monkeypatch):
    """`vaekit diffusability --time-shift auto --time-shift-base-dim 256`: each denoiser's config carries the base,
    so a 64 × 8 × 8 latent gets α = √(4096 / 256) = 4 (with the default 4096 it would get α = 1)."""
    from vaekit.cli import build_parser
    from vaekit.diffusion import diffusability
    from vaekit.diffusion.model import time_shift as alpha_of

    args = build_parser().parse_args(["diffusability", "a", "b", "-o", str(tmp_path), "--time-shift", "auto",
                                      "--time-shift-base-dim", "256"])
    budget = diffusability.make_budget(diffusability.budget_overrides(args))
    assert (budget.time_shift, budget.time_shift_base_dim) == ("auto", 256)
    seen = {}

    def fake_train(config, **kwargs):
        seen["config"] = config
        return tmp_path / "run"

    monkeypatch.setattr(diffusability, "train", fake_train)
    monkeypatch.setattr(diffusability, "evaluate", lambda run, device: {})
    monkeypatch.setattr(diffusability, "diffusion_config", lambda path, config, overrides: overrides)
    diffusability._denoiser(tmp_path, budget, 0, tmp_path, "rae", "cpu")
    overrides = dict(item.split("=", 1) for item in seen["config"])
    assert overrides["model.time_shift"] == "auto" and overrides["model.time_shift_base_dim"] == "256"
    config = DenoiserConfig(in_channels=64, sample_size=8, time_shift="auto",
                            time_shift_base_dim=int(overrides["model.time_shift_base_dim"]))
    assert alpha_of(config) == 4.0
