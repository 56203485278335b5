"""The LDM training recipe: adaptive weight, discriminator gating and losses, gradient isolation, EMA,
resume with a discriminator, image metrics against scikit-image, LPIPS offline behaviour."""

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit.config import load_config
from vaekit.data import ImageDataset
from vaekit.losses import LPIPSGANConfig, LPIPSWithDiscriminator
from vaekit.losses.discriminator import NLayerDiscriminator, hinge_d_loss, vanilla_d_loss
from vaekit.losses.lpips_gan import adaptive_weight
from vaekit.losses.perceptual import WeightsUnavailable, make_lpips
from vaekit.metrics.image import evaluate_reconstruction, ssim
from vaekit.models.autoencoder_kl import AutoencoderKL
from vaekit.registry import MODELS
from vaekit.runs import read_log
from vaekit.training.ema import EMA

SMALL = dict(block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8, latent_channels=3)


def small_model():
    torch.manual_seed(0)
    return vaekit.create_model("autoencoder-kl", **SMALL)


def loss_module(**fields):
    return LPIPSWithDiscriminator(LPIPSGANConfig(**{"perceptual_weight": 0.0, **fields}))


def test_adaptive_weight_matches_a_hand_computation():
    W = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    x = torch.tensor([3.0, -1.0])
    y = W @ x
    nll, g = y.pow(2).sum(), 3.0 * y.sum()
    # ∂nll/∂W = 2 y xᵀ, ∂g/∂W = 3 · 1 xᵀ (by hand)
    y0 = (W @ x).detach()
    expected = (2 * y0[:, None] * x[None]).norm() / ((3 * torch.ones(2, 1) * x[None]).norm() + 1e-4) * 0.5
    assert adaptive_weight(nll, g, W, 0.5).item() == pytest.approx(expected.item(), rel=1e-6)
    huge = adaptive_weight(1e9 * nll, 1e-9 * g, W, 1.0)
    assert huge.item() == 1e4  # clamped


def test_hinge_and_vanilla_losses_match_closed_forms():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    hinge = 0.5 * (np.mean([max(0, 1 - r) for r in real.tolist()]) + np.mean([max(0, 1 + f) for f in fake.tolist()]))
    vanilla = 0.5 * (np.mean([math.log1p(math.exp(-r)) for r in real.tolist()])
                     + np.mean([math.log1p(math.exp(f)) for f in fake.tolist()]))
    assert hinge_d_loss(real, fake).item() == pytest.approx(hinge)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(vanilla)


def test_patchgan_is_taming_s_nlayer_discriminator():
    d = NLayerDiscriminator(3, 64, 3)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1] and all(c.kernel_size == (4, 4) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()) == 3
    assert abs(convs[1].weight.std().item() - 0.02) < 0.002  # N(0, 0.02) init
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)


def _step_inputs():
    model = small_model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    return model, x, model(x)


def test_the_discriminator_waits_for_disc_start():
    loss_fn = loss_module(disc_start=5)
    model, x, output = _step_inputs()
    before, logs = loss_fn(x, output, step=4, last_layer=model.decoder.conv_out.weight)
    assert "g_loss" not in logs and not loss_fn.discriminator_active(4)
    expected = (output.reconstruction - x).abs().sum() / 2 + 1e-6 * output.posterior.kl().sum() / 2
    assert before.item() == pytest.approx(expected.item(), rel=1e-6)
    after, logs = loss_fn(x, output, step=5, last_layer=model.decoder.conv_out.weight)
    assert "g_loss" in logs and "d_weight" in logs and loss_fn.discriminator_active(5)
    assert after.item() == pytest.approx(before.item() + logs["d_weight"] * logs["g_loss"], rel=1e-5)


def test_the_mean_reduction_is_the_plain_loops_loss():
    model, x, output = _step_inputs()
    loss, _ = loss_module(reduction="mean", kl_weight=1e-3)(x, output)
    # What a diffusers user writes: F.l1_loss (a mean over every pixel) + w · KL summed over the latent, per image
    expected = torch.nn.functional.l1_loss(output.reconstruction, x) + 1e-3 * output.posterior.kl().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    summed, _ = loss_module(reduction="sum", kl_weight=1e-3 * x[0].numel())(x, output)
    assert summed.item() == pytest.approx(x[0].numel() * loss.item(), rel=1e-5)  # the same loss, C·H·W times


def test_the_three_defects_cannot_occur():
    # 1. The perceptual term carries gradient to the reconstruction.
    model, x, output = _step_inputs()
    with_lpips = LPIPSWithDiscriminator(LPIPSGANConfig(perceptual_weight=1.0, lpips_pretrained=False, disc_weight=0))
    without = loss_module(disc_weight=0)
    x_hat = output.reconstruction.detach().requires_grad_(True)
    fake = type(output)(output.posterior, output.z, x_hat)
    grad_with = torch.autograd.grad(with_lpips(x, fake)[0], x_hat, retain_graph=True)[0]
    grad_without = torch.autograd.grad(without(x, fake)[0], x_hat, retain_graph=True)[0]
    assert (grad_with - grad_without).abs().max() > 1e-6

    # 2. The generator step leaves the discriminator without gradient; 3. the discriminator step
    # sees detached reconstructions, so the autoencoder gets no gradient from it.
    loss_fn = loss_module(disc_start=0)
    loss, _ = loss_fn(x, output, step=0, last_layer=model.decoder.conv_out.weight)
    loss.backward()
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())
    for p in model.parameters():
        p.grad = None
    output = model(x)
    d_loss, _ = loss_fn.discriminator_step_loss(x, output.reconstruction)  # not detached by the caller
    d_loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in loss_fn.discriminator.parameters())


def test_ema_update_is_the_moving_average_with_ldm_s_warm_up():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)  # frozen, as a fine-tuned encoder: copied, never averaged
    ema = EMA(model, decay=0.999)
    shadow = [p.detach().clone() for p in model.parameters()]
    for n in range(25):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        decay = min(0.999, (1 + n) / (10 + n))  # LitEma's warm-up, by hand
        assert ema.current_decay() == pytest.approx(decay)
        ema.update(model)
        shadow = [s * decay + p.detach() * (1 - decay) if p.requires_grad else p.detach().clone()
                  for s, p in zip(shadow, model.parameters())]
    for mine, theirs, p in zip(ema.shadow.parameters(), shadow, model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
        if not p.requires_grad:
            assert torch.equal(mine, p)
    assert int(ema.num_updates) == 25
    # After 25 steps the warm-up has moved the shadow off the initial weights: a plain 0.999 average
    # would still hold 97.5 % of them.
    assert ema.current_decay() < 0.75


def _overrides(tmp_path, **extra):
    values = {"model.name": "autoencoder-kl", "model.block_out_channels": "[16,16]", "model.norm_num_groups": 8,
              "model.layers_per_block": 1, "data.name": "photos", "data.crop_size": 32, "data.num_train": 24,
              "loss.perceptual_weight": 0, "loss.disc_start": 3, "train.epochs": 2, "train.batch_size": 4,
              "train.checkpoint_every": 4, "train.progress_bar": "false", "train.ema_decay": 0.9,
              "train.lr_warmup_steps": 2, "train.lr_schedule": "cosine", "train.snapshot_examples": 2,
              "output_dir": str(tmp_path / "runs"), **extra}
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


def test_resume_with_a_discriminator_is_exact(tmp_path, monkeypatch):
    reference = vaekit.train(_overrides(tmp_path, run_name="reference"), evaluate_at_end=False, explore=False)
    original, calls = LPIPSWithDiscriminator.forward, {"n": 0}

    def interrupt(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LPIPSWithDiscriminator, "forward", interrupt)
    with pytest.raises(vaekit.training.TrainingInterrupted):
        vaekit.train(_overrides(tmp_path, run_name="stopped"), evaluate_at_end=False, explore=False)
    monkeypatch.undo()
    stopped = reference.parent / "stopped"
    vaekit.train(resume=stopped, evaluate_at_end=False, explore=False)
    for name in ("model/model.safetensors", "checkpoints/step-00000012/trainer.safetensors"):
        a, b = load_file(reference / name), load_file(stopped / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng.")), name
    state = load_file(reference / "checkpoints/step-00000012/trainer.safetensors")
    assert any(k.startswith("module.loss.discriminator.") for k in state)
    assert any(k.startswith("optimizer.discriminator.") for k in state) and any(k.startswith("module.ema.") for k in state)
    log = read_log(reference)
    assert any("d_loss" in record for record in log)


def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from vaekit.metrics.image import psnr

    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 256, 256, generator=generator) * 2 - 1
    b = (a + 0.2 * torch.randn(a.shape, generator=generator)).clamp(-1, 1)
    mse = (a - b).double().pow(2).mean().item()
    assert psnr(mse) == pytest.approx(peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=2.0), rel=1e-6)
    ours = ssim(a, b)
    for i in range(2):
        reference = structural_similarity(a[i].numpy(), b[i].numpy(), data_range=2.0, channel_axis=0,
                                          gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        # The two treat the 5-pixel border differently (torchmetrics pads, scikit-image crops), which
        # matters less as images grow: about 5e-3 apart at 48×48, 1e-3 at 256×256.
        assert ours[i].item() == pytest.approx(reference, abs=2e-3)


def test_lpips_with_a_random_backbone_and_the_offline_message(tmp_path, monkeypatch):
    network = make_lpips(pretrained_backbone=False)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert network(x, x).abs().max() < 1e-6 and (network(x, -x) > 0).all()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsUnavailable, match=r"vgg16-397923af\.pth.*empty-cache.*hub.*checkpoints"):
        make_lpips(pretrained_backbone=True)
    metrics = evaluate_reconstruction(small_model().eval(), ImageDataset(torch.rand(3, 3, 16, 16)),
                                      to_model_range=lambda t: t * 2 - 1)
    assert metrics["lpips"] is None and "vgg16-397923af.pth" in metrics["unavailable"]["lpips"]
    assert metrics["rfid"] is None and "weights-inception-2015-12-05-6726825d.pth" in metrics["unavailable"]["rfid"]
    assert math.isfinite(metrics["psnr"]) and 0 < metrics["ssim"] <= 1
    assert len(metrics["latent_channel_std"]) == 3


KL_PRESETS = [pytest.param(name, marks=[pytest.mark.slow] if name != "kl-f8-tiny" else [])
              for name in MODELS.names() if MODELS.get(name).obj is AutoencoderKL and name != "autoencoder-kl"]


@pytest.mark.parametrize("name", KL_PRESETS)
def test_two_training_steps_of_every_preset(name, tmp_path):
    config = load_config(None, [f"model.name={name}", "data.name=photos", "data.crop_size=32", "data.num_train=2",
                                "train.batch_size=1", "train.epochs=1", "loss.perceptual_weight=0",
                                "loss.disc_start=1", "train.progress_bar=false", "train.snapshot_examples=0",
                                "train.validation_examples=2", f"output_dir={tmp_path}"])
    run = vaekit.train(config, evaluate_at_end=False, explore=False)
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 2


def test_the_learned_log_variance_is_optimised():
    loss_fn = loss_module(learn_logvar=True, disc_weight=0)
    model, x, _ = _step_inputs()
    optimizer = torch.optim.Adam(list(model.parameters()) + loss_fn.generator_parameters(), lr=0.1)
    for _ in range(3):
        loss, logs = loss_fn(x, model(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert logs["logvar"] != 0.0 and loss_fn.logvar.item() != 0.0
    assert loss_module(learn_logvar=False).generator_parameters() == []


@pytest.mark.parametrize("learn", [True, False])
def test_the_trainer_optimises_the_learned_log_variance_only_when_asked(learn, tmp_path):
    run = vaekit.train(_overrides(tmp_path, **{"loss.learn_logvar": str(learn).lower(), "train.lr": 1e-2,
                                               "train.log_every": 2}),
                       evaluate_at_end=False, explore=False)
    checkpoint = run / "checkpoints" / "step-00000012"
    state = load_file(checkpoint / "trainer.safetensors")
    meta = json.loads((checkpoint / "trainer.json").read_text())
    model_parameters = sum(1 for p in vaekit.load_model(run).parameters())
    optimised = meta["optimizers"]["model"]["param_groups"][0]["params"]
    assert len(optimised) == model_parameters + learn  # the log-variance is the model optimizer's last parameter
    logvar_moments = state.get(f"optimizer.model.{optimised[-1]}.exp_avg")
    assert (logvar_moments is not None and logvar_moments.shape == ()) == learn
    assert (state["module.loss.logvar"].item() != 0.0) == learn  # it moved, or stayed at 0
    logged = [r["logvar"] for r in read_log(run) if "logvar" in r]
    assert (len(set(logged)) > 1) == learn


def test_high_frequency_energy_against_closed_forms():
    from vaekit.metrics.image import high_frequency_energy

    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    fine = torch.cos(2 * math.pi * 0.375 * x)[None, None]  # 12 cycles over 32 pixels: above the cutoff
    coarse = torch.cos(2 * math.pi * 0.125 * y)[None, None]  # below it
    assert high_frequency_energy(fine).item() == pytest.approx(fine.pow(2).sum().item())  # all of it (Parseval)
    assert high_frequency_energy(coarse).item() == pytest.approx(0.0, abs=1e-9)
    both = torch.cat([fine + coarse, 0.5 * fine])
    torch.testing.assert_close(high_frequency_energy(both), torch.tensor([512.0, 128.0], dtype=torch.float64), rtol=1e-5,
                               atol=0)
    noise = torch.randn(2, 3, 31, 33, generator=torch.Generator().manual_seed(0))  # odd sizes: every bin counted once
    assert high_frequency_energy(noise, cutoff=0.0).sum().item() == pytest.approx(noise.double().pow(2).sum().item())
    blurred = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1)
    assert (high_frequency_energy(blurred) < 0.2 * high_frequency_energy(noise)).all()


def test_weights_download_into_the_torch_cache_where_the_network_allows(weights_server, tmp_path, monkeypatch):
    """The download path for real, without the internet: a weights file served from the loopback address
    is fetched into $TORCH_HOME/hub/checkpoints by the same call a user's machine makes, and LPIPS then
    runs on exactly those weights. A failed download (nothing listens) gets the message naming the file."""
    import socket

    from vaekit.losses import perceptual
    from vaekit.metrics.image import INCEPTION_FILE

    base, vgg = weights_server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(perceptual, "VGG_URL", f"{base}/{perceptual.VGG_FILE}")
    network = make_lpips(pretrained_backbone=True)
    cached = tmp_path / "cache" / "hub" / "checkpoints" / perceptual.VGG_FILE
    assert cached.is_file()
    features = network.net.slice1[0].weight  # LPIPS's VGG: its first convolution
    assert torch.equal(features, vgg["features.0.weight"])
    path = perceptual.fetch_weights(INCEPTION_FILE, f"{base}/{INCEPTION_FILE}", "FID")
    assert path.read_bytes() == b"inception weights stand-in"
    with socket.socket() as probe:  # a port nothing listens on: the download fails, the message says what
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/missing.pth"
    with pytest.raises(WeightsUnavailable, match=r"missing\.pth.*could not be downloaded from http://127\.0\.0\.1"):
        perceptual.fetch_weights("missing.pth", dead, "a test")
    assert not (tmp_path / "cache" / "hub" / "checkpoints" / "missing.pth").exists()
