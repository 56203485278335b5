"""Stage B: the denoiser on exported latents, its schedule, objective, training, sampling and bad input."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit.cli import main
from vaekit.config import load_config
from vaekit.diffusion.config import diffusion_config
from vaekit.diffusion.evaluation import held_out_eps_mse
from vaekit.diffusion.loss import DiffusionLoss
from vaekit.diffusion.model import DenoiserConfig, LatentDenoiser
from vaekit.errors import ConfigError
from vaekit.latents import export_latents
from vaekit.models.latent_scale import measure_latent_scale, store_latent_scale
from vaekit.training import train

TINY_UNET = ["model.block_out_channels=[16,32]", "model.norm_num_groups=8", "model.attention_levels=[]",
             "train.progress_bar=false", "train.snapshot_examples=4", "explore.num_examples=4"]


def denoiser(**extra) -> LatentDenoiser:
    torch.manual_seed(0)
    values = dict(sample_size=4, in_channels=3, block_out_channels=(16, 32), norm_num_groups=8, attention_levels=(),
                  layers_per_block=1)
    return LatentDenoiser(DenoiserConfig(**{**values, **extra}))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A calibrated kl-f8-tiny-shaped VAE (random weights, 3 latent channels) and its export of 48 labelled
    32×32 images (two classes: the image's sub-folder), latents 3×4×4 with unit standard deviation."""
    root = tmp_path_factory.mktemp("export")
    from skimage import data

    rng = np.random.default_rng(0)
    for k, (name, photo) in enumerate([("cat", data.chelsea()), ("coffee", data.coffee())]):
        (root / "images" / name).mkdir(parents=True)
        for i in range(24):
            top, left = rng.integers(0, photo.shape[0] - 96), rng.integers(0, photo.shape[1] - 96)
            Image.fromarray(photo[top:top + 96:3, left:left + 96:3]).save(root / "images" / name / f"{i}.png")
    torch.manual_seed(0)
    vae = vaekit.create_model("autoencoder-kl", block_out_channels=(16, 16, 16, 16), layers_per_block=1,
                              norm_num_groups=8, latent_channels=3).eval()
    images = torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
                          for p in sorted((root / "images").rglob("*.png"))]).float() / 127.5 - 1
    with torch.no_grad():  # a near-deterministic posterior, as a trained SD-like VAE's (a random one's noise dominates)
        vae.quant_conv.weight[3:] = 0.0  # the log-variance half: −12 everywhere
        vae.quant_conv.bias[3:] = -12.0
    store_latent_scale(vae, measure_latent_scale(vae, [images], torch.Generator().manual_seed(0)).norm)
    vaekit.save_model(vae, root / "vae")
    export_latents(vae, str(root / "images"), root / "latents", shard_size=16, model_source=root / "vae")
    return root


def test_forward_noising_follows_the_closed_form():
    """c_t = √ᾱ_t c₀ + √(1 − ᾱ_t) ε with SD's scaled-linear schedule, ᾱ_t = Π_{s≤t} (1 − β_s) and
    β = linspace(√0.00085, √0.012, 1000)²: the mean and variance of c_t over many draws."""
    model = denoiser()
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=np.float64) ** 2
    alpha_bar = np.cumprod(1 - betas)
    np.testing.assert_allclose(model.scheduler.alphas_cumprod.numpy(), alpha_bar, rtol=1e-5)
    generator = torch.Generator().manual_seed(0)
    clean = torch.full((20000, 3, 4, 4), 0.7)
    for t_value in (0, 250, 999):
        t = torch.full((len(clean),), t_value)
        noisy = model.add_noise(clean, torch.randn(clean.shape, generator=generator), t)
        assert noisy.mean().item() == pytest.approx(math.sqrt(alpha_bar[t_value]) * 0.7, abs=3e-3)
        assert noisy.var().item() == pytest.approx(1 - alpha_bar[t_value], rel=1e-2, abs=1e-4)


def test_schedule_options_reach_both_samplers_and_every_step_count_samples():
    model = denoiser(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    for kind in ("ddpm", "ddim"):
        scheduler = model.noise_scheduler(kind)
        assert scheduler.alphas_cumprod[-1].item() < 1e-6  # zero terminal SNR: pure noise at t = T − 1
        assert scheduler.config.timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="needs prediction_type=v_prediction"):
        DenoiserConfig(rescale_betas_zero_snr=True)
    plain = denoiser()  # SD's "leading" spacing with its offset of one: every count from 1 to T works
    noise = torch.randn(1, 3, 4, 4)
    plain.predict = lambda noisy, t, labels=None: torch.zeros_like(noisy)
    for steps in (1, 999, 1000):
        assert torch.isfinite(plain.sample(noise, steps=steps, scheduler="ddim")).all()
    with pytest.raises(ConfigError, match="give 1 to 1000"):
        plain.sample(noise, steps=1001)


def _gaussian_oracle(model, mu: float, sigma: float):
    """The exact optimal predictor for data N(μ, σ²) per element: with x_t = √ᾱ x₀ + √(1 − ᾱ) ε,
    E[ε | x_t] = √(1 − ᾱ)(x_t − √ᾱ μ) / (ᾱσ² + 1 − ᾱ) and E[x₀ | x_t] = μ + √ᾱ σ² (x_t − √ᾱ μ) / (ᾱσ² + 1 − ᾱ);
    v = √ᾱ ε − √(1 − ᾱ) x₀ (no division: defined at zero terminal SNR too)."""
    alpha_bar = model.noise_scheduler().alphas_cumprod.double()

    def predict(noisy, t, labels=None):
        a = alpha_bar[t].view(-1, 1, 1, 1)
        x = noisy.double()
        denominator = a * sigma ** 2 + 1 - a
        eps = (1 - a).sqrt() * (x - a.sqrt() * mu) / denominator
        if model.config.prediction_type == "epsilon":
            return eps.float()
        x0 = mu + a.sqrt() * sigma ** 2 * (x - a.sqrt() * mu) / denominator
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).float()

    return predict


ZERO_SNR = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


@pytest.mark.parametrize("schedule, sampler, steps, unbiased", [
    ({}, "ddpm", 1000, True),
    ({"prediction_type": "v_prediction"}, "ddpm", 1000, True),
    ({}, "ddim", 500, False),  # SD's schedule: the mean bias of Lin et al. 2023, which more steps do not remove
    ({"prediction_type": "v_prediction"}, "ddim", 500, False),
    (ZERO_SNR, "ddim", 200, True),  # rescaled to zero terminal SNR, trailing timesteps: the bias goes
    (ZERO_SNR, "ddpm", 1000, True),
])
def test_sampling_with_the_optimal_denoiser_recovers_gaussian_data(schedule, sampler, steps, unbiased):
    """The known answer: for data N(μ = 0.7, σ = 0.5) the optimal predictor is analytic; sampling with it
    through vaekit's sampling path must give back μ and σ within what 16,384 values allow (5 standard
    errors: σ/√n = 0.0039 for the mean, σ/√(2n) = 0.0028 for the std). SD's schedule never reaches zero
    SNR, so DDIM starts from noise that is not the true marginal and its mean stays biased (measured 0.672,
    7 standard errors off, at 500 steps as at 50). DDIM's std has a discretisation error besides, which
    steps do shrink (0.477 at 50 steps, 0.496 at 200), hence the step counts here."""
    mu, sigma, n = 0.7, 0.5, 16384
    model = denoiser(in_channels=1, sample_size=4, **schedule)
    model.predict = _gaussian_oracle(model, mu, sigma)
    noise = torch.randn(n // 16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    samples = model.sample(noise, steps=steps, scheduler=sampler, generator=torch.Generator().manual_seed(1)).double()
    mean_error, std_error = abs(samples.mean().item() - mu), abs(samples.std().item() - sigma)
    assert std_error < 5 * sigma / math.sqrt(2 * n)
    assert (mean_error < 5 * sigma / math.sqrt(n)) == unbiased


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_objective_is_zero_at_its_known_optimum(prediction_type):
    """With every latent equal to one known c₀, the optimal predictor is known in closed form: ε* =
    (c_t − √ᾱ_t c₀) / √(1 − ᾱ_t), v* = √ᾱ_t ε* − √(1 − ᾱ_t) c₀. It scores 0; predicting 0 scores E[ε²] = 1 (ε)
    or E[v²] = ᾱ + (1 − ᾱ) c₀² averaged over t (v)."""
    model = denoiser(prediction_type=prediction_type)
    c0 = torch.full((512, 3, 4, 4), 0.5)
    alpha_bar = model.scheduler.alphas_cumprod

    def oracle(noisy, t, labels=None):
        a = alpha_bar[t].view(-1, 1, 1, 1)
        eps = (noisy - a.sqrt() * c0) / (1 - a).sqrt()
        return eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * c0

    model.predict = oracle
    loss, _ = DiffusionLoss()(c0, model(c0, generator=torch.Generator().manual_seed(0)))
    assert loss.item() < 1e-6
    model.predict = lambda noisy, t, labels=None: torch.zeros_like(noisy)
    output = model(c0, generator=torch.Generator().manual_seed(1))
    loss, _ = DiffusionLoss()(c0, output)
    a = alpha_bar[output.timesteps]
    expected = 1.0 if prediction_type == "epsilon" else (a + (1 - a) * 0.25).mean().item()
    assert loss.item() == pytest.approx(expected, rel=0.03)


def test_latents_data_labels_split_and_scale(export, caplog):
    config = diffusion_config(str(export / "latents"), None, TINY_UNET)
    assert config.model.name == "unet-tiny" and config.data.name == "latents"
    from vaekit.data import build_dataset

    train_data, test_data = build_dataset(config.data, "train"), build_dataset(config.data, "test")
    assert len(train_data) + len(test_data) == 48 and train_data.class_names == ["cat", "coffee"]
    assert train_data.image_shape == (3, 4, 4)
    latents, labels = train_data.__getitems__([0, 1, 2])
    assert latents.shape == (3, 3, 4, 4) and labels.tolist() == [0, 0, 0]
    assert "standard deviation" not in caplog.text  # calibrated: no warning


def test_training_lowers_held_out_error_then_samples_decode_through_the_recorded_vae(export, tmp_path, capsys):
    overrides = [*TINY_UNET, "train.epochs=12", "train.batch_size=16", "train.lr=2e-3", "train.lr_warmup_steps=0",
                 "train.validate_every=12", "model.class_conditional=true", f"output_dir={tmp_path}", "run_name=sb"]
    config = diffusion_config(str(export / "latents"), None, overrides)
    from vaekit.data import build_dataset
    from vaekit.models import create_model
    from vaekit.training.setup import resolve_for_data

    test_data = build_dataset(config.data, "test")
    torch.manual_seed(config.seed)
    untrained = create_model(config.model.name, **vars(resolve_for_data(config, test_data).model.params))
    before = held_out_eps_mse(untrained, test_data, draws=8)["eps_mse"]
    run = train(config)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["eps_mse"] < 0.8 * before, (metrics["test"]["eps_mse"], before)
    assert len(metrics["test"]["eps_mse_by_timestep"]) == 10
    figures = {f["name"] for f in json.loads((run / "figures" / "figures.json").read_text())["figures"]}
    assert {"samples", "progression", "losses", "validation", "eps_mse_by_timestep"} <= figures

    assert main(["diffusion", "sample", str(run), "-n", "3", "--steps", "4", "--class", "1", "-o",
                 str(tmp_path / "samples")]) == 0
    pngs = sorted((tmp_path / "samples").glob("sample-*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (32, 32)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "samples" / "samples.safetensors")
    assert saved["latents"].shape == (3, 3, 4, 4) and saved["labels"].tolist() == [1, 1, 1]
    vae = vaekit.load_model(export / "vae")
    manifest = json.loads((export / "latents" / "manifest.json").read_text())
    with torch.no_grad():
        by_hand = vae.decode(saved["latents"][:1] / manifest["scaling_factor"] + manifest["shift_factor"])
    written = torch.from_numpy(np.array(Image.open(pngs[0]))).permute(2, 0, 1).float() / 127.5 - 1
    assert (written - by_hand[0].clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6  # one 8-bit step

    code = main(["diffusion", "sample", str(run), "-n", "2", "--class", "2", "-o", str(tmp_path / "s2")])
    assert code == 1 and "the model knows classes 0 to 1" in capsys.readouterr().err


def test_a_reduced_precision_export_samples_through_the_float32_vae(export, tmp_path):
    """The export's fingerprint is of the weights as given, not of their bfloat16 cast, so `diffusion sample`
    accepts the float32 VAE the manifest names."""
    out = tmp_path / "bf16"
    assert main(["export-latents", "--model", str(export / "vae"), "--data", str(export / "images"), "-o", str(out),
                 "--dtype", "bfloat16"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16"
    assert manifest["model_fingerprint"] == json.loads((export / "latents" / "manifest.json").read_text())["model_fingerprint"]
    run = train(diffusion_config(str(out), None, [*TINY_UNET, "train.max_steps=1", f"output_dir={tmp_path}"]),
                evaluate_at_end=False, explore=False)
    assert main(["diffusion", "sample", str(run), "-n", "2", "--steps", "2", "-o", str(tmp_path / "samples")]) == 0
    assert len(list((tmp_path / "samples").glob("sample-*.png"))) == 2


def test_a_single_channel_vae_exports_and_samples_grayscale_images(export, tmp_path):
    torch.manual_seed(0)
    gray = vaekit.create_model("autoencoder-kl", block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8,
                               latent_channels=2, in_channels=1, out_channels=1, scaling_factor=3.0)
    vaekit.save_model(gray, tmp_path / "gray")
    export_latents(gray.eval(), str(export / "images"), tmp_path / "latents", model_source=tmp_path / "gray")
    run = train(diffusion_config(str(tmp_path / "latents"), None, [*TINY_UNET, "train.max_steps=1",
                                                                    f"output_dir={tmp_path}"]),
                evaluate_at_end=False, explore=False)
    assert main(["diffusion", "sample", str(run), "-n", "2", "--steps", "2", "-o", str(tmp_path / "samples")]) == 0
    image = Image.open(tmp_path / "samples" / "sample-0000.png")
    assert image.mode == "L" and image.size == (32, 32)


def test_resume_is_exact(export, tmp_path):
    overrides = [*TINY_UNET, "train.epochs=3", "train.batch_size=16", "train.validate_every=100", f"output_dir={tmp_path}"]
    whole = train(diffusion_config(str(export / "latents"), None, overrides + ["run_name=whole"]),
                  evaluate_at_end=False, explore=False)
    part = train(diffusion_config(str(export / "latents"), None, overrides + ["run_name=part", "train.max_steps=4",
                                                                            "train.checkpoint_every=4"]),
                 evaluate_at_end=False, explore=False)
    train(resume=part, overrides=["train.max_steps=null"], evaluate_at_end=False, explore=False)
    a, b = vaekit.load_model(whole), vaekit.load_model(part)
    assert all(torch.equal(a.state_dict()[key], value) for key, value in b.state_dict().items())


def test_bad_input_is_a_one_line_error(export, tmp_path, capsys):
    def error(*argv):
        code = main(list(argv))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1
        return err[-1]

    (tmp_path / "empty").mkdir()
    assert "has no manifest.json" in error("diffusion", "train", str(tmp_path / "empty"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for size in (32, 64):  # exported at their own sizes: two latent shapes
        Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(mixed / f"{size}.png")
    export_latents(vaekit.load_model(export / "vae"), str(mixed), tmp_path / "mixed-latents")
    mixed = tmp_path / "mixed-latents"
    assert "mixes latents of 2 shapes" in error("diffusion", "train", str(mixed))
    assert "must be latent-unet or a preset" in error("diffusion", "train", str(export / "latents"), "model.name=kl-f8")

    run = train(diffusion_config(str(export / "latents"), None, [*TINY_UNET, "train.max_steps=1", f"output_dir={tmp_path}"]),
                evaluate_at_end=False, explore=False)
    shutil.move(export / "vae", tmp_path / "vae-moved")
    try:
        message = error("diffusion", "sample", str(run), "-n", "1", "-o", str(tmp_path / "out"))
        assert "cannot load the VAE that encoded the latents" in message and "--vae PATH" in message
        assert "not the image autoencoder" in error("diffusion", "sample", str(run), "-n", "1", "--vae", str(run),
                                                     "-o", str(tmp_path / "out"))
    finally:
        shutil.move(tmp_path / "vae-moved", export / "vae")


def test_far_from_unit_latents_get_a_warning_naming_the_factor(export, tmp_path, caplog):
    vae = vaekit.load_model(export / "vae")
    vae.config.scaling_factor *= 4
    export_latents(vae, str(export / "images"), tmp_path / "loud", model_source=export / "vae")
    config = load_config(None, ["model.name=unet-tiny", "data.name=latents", f"data.path={tmp_path / 'loud'}"])
    from vaekit.data import build_dataset

    with caplog.at_level("WARNING", logger="vaekit"):
        build_dataset(config.data, "train")
    import re

    std, suggested = re.search(r"standard deviation ([0-9.]+) .* A scaling factor of ([0-9.]+) would give 1",
                               caplog.text).groups()
    assert float(std) == pytest.approx(4, rel=0.02)  # the calibrated export, scaled 4× too much
    assert float(suggested) == pytest.approx(vae.config.scaling_factor / 4, rel=0.02)


def test_the_spectrum_of_a_sinusoid_peaks_at_its_frequency_and_white_noise_is_flat():
    from vaekit.metrics.latent import high_frequency_fraction, radial_power_spectrum

    n = torch.arange(32, dtype=torch.float64)
    for frequency in (0.125, 0.375):
        wave = torch.sin(2 * math.pi * frequency * n).expand(2, 3, 32, 32)  # varies along the width only
        bins, power = radial_power_spectrum(wave)
        peak = bins[power.argmax()].item()
        assert abs(peak - frequency) <= 0.5 / 16 / 2 + 1e-9, (frequency, peak)
        assert high_frequency_fraction(wave) == pytest.approx(1.0 if frequency > 0.25 else 0.0, abs=1e-9)
    _, power = radial_power_spectrum(torch.randn(512, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert power[0] == 0  # the first bin holds only the mean, which is removed
    assert power[1:].max() / power[1:].min() < 1.1  # white: the same power at every frequency


def test_equivariance_errors_are_zero_for_an_equivariant_autoencoder_and_not_otherwise():
    from vaekit.metrics.latent import equivariance_errors

    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    identity = equivariance_errors(lambda x: x, lambda z: z, images)
    assert all(value == 0.0 for value in identity.values()) and len(identity) == 3
    pattern = torch.linspace(-0.5, 0.5, 16).expand(16, 16)  # a gradient along the width: not rotation-invariant
    # Exact reconstruction, but the code is tied to the pixel grid: rotating it does not rotate the image.
    shifted = equivariance_errors(lambda x: x + pattern, lambda z: (z - pattern[..., :z.shape[-2], :z.shape[-1]]),
                                  images)
    assert shifted["reconstruction_mse"] < 1e-12 and shifted["equivariance_mse_rotate_90"] > 0.01
    # an odd latent side (a 40-pixel image at f = 8: 5 latent rows) is cropped to even for ×0.5
    pool, nearest = torch.nn.functional.avg_pool2d, torch.nn.functional.interpolate
    coarse = torch.rand(2, 3, 3, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    # constant on 16-pixel blocks: an f = 8 "pool, repeat" autoencoder keeps it, and is equivariant to ×0.5 on it
    blocky = nearest(coarse, scale_factor=16)[..., :40, :40]
    errors = equivariance_errors(lambda x: pool(x, 8), lambda z: nearest(z, scale_factor=8), blocky)
    assert errors["reconstruction_mse"] < 1e-12 and errors["equivariance_mse_scale_0.5"] < 1e-12


@pytest.mark.slow
def test_the_diffusability_report_compares_autoencoders_under_one_budget(tmp_path, capsys, caplog, monkeypatch):
    from huggingface_hub import constants

    from vaekit.diffusion.page import JSON_FILE, PAGE, TABLE

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # FD_DINOv2 unavailable at once
    for seed, name in ((0, "first"), (1, "second")):
        torch.manual_seed(seed)
        vaekit.save_model(vaekit.create_model("autoencoder-kl", block_out_channels=(16, 16), layers_per_block=1,
                                              norm_num_groups=8, latent_channels=3), tmp_path / name)
    from skimage import data

    rng = np.random.default_rng(0)
    for name, photo in (("cat", data.chelsea()), ("coffee", data.coffee())):  # labelled: one folder per class
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(20):
            top, left = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
            Image.fromarray(photo[top:top + 64:4, left:left + 64:4]).save(tmp_path / "images" / name / f"{i}.png")
    (tmp_path / "images" / "cat" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n not the rest")  # skipped, named
    code = main(["diffusability", str(tmp_path / "first"), str(tmp_path / "second"), "--data", str(tmp_path / "images"),
                 "--resolution", "16", "--min-latent-side", "8", "--steps", "3", "--batch-size", "8", "--seeds", "0,1",
                 "--samples", "24",
                 "-o", str(tmp_path / "out")])
    assert code == 0 and "skipped: " in caplog.text and "truncated.png" in caplog.text
    verdict = capsys.readouterr().out.splitlines()[0]  # labelled images: the classifier arbitrates, first line
    assert verdict.startswith("verdict: ") and "by sample_classifier_fd" in verdict
    out = tmp_path / "out"
    rows = json.loads((out / JSON_FILE).read_text())["rows"]
    assert [row["vae"] for row in rows] == ["first", "second"]
    for row in rows:
        assert len(row["eps_mse_seeds"]) == 2 and row["eps_mse_spread"] == pytest.approx(
            max(row["eps_mse_seeds"]) - min(row["eps_mse_seeds"]))
        assert row["compression_ratio"] == 3 * 2 * 2 / 3 and row["latent_shape"] == [3, 8, 8]
        assert row["sample_fid"] is None and row["sample_kid"] is None and "Inception" in row["sample_fid_unavailable"]
        # labelled data: a classifier's Fréchet distance is computed (its formula: the closed-form test below)
        assert math.isfinite(row["sample_classifier_fd"])
        assert 0 < row["equivariance_mse_rotate_90"] and 0 < row["psnr"]
        # normalised by the one convention: 1/std of posterior samples (seed 0) of the same 256 images, spread over
        # the folder's classes
        from vaekit.io.images import read_image
        from vaekit.latents import open_source

        from vaekit.diffusion.images import spread_order

        names = [n for n in spread_order(open_source(str(tmp_path / "images")).names) if n != "cat/truncated.png"][:256]
        images = torch.cat([read_image(tmp_path / "images" / name, resolution=16) for name in names])
        original = vaekit.load_model(tmp_path / row["vae"])
        expected = measure_latent_scale(original, [images[i:i + 32] for i in range(0, len(images), 32)],
                                        torch.Generator().manual_seed(0)).norm.scaling_factor
        assert vaekit.load_model(out / "vaes" / row["vae"]).config.scaling_factor == pytest.approx(expected, rel=1e-9)
        # each seed's ε-MSE is its denoiser's held-out error, as `vaekit eval` of that run gives it
        for seed, eps in zip((0, 1), row["eps_mse_seeds"]):
            assert vaekit.evaluate(out / "runs" / f"{row['vae']}-seed{seed}")["eps_mse"] == pytest.approx(eps, rel=1e-9)
    assert (out / PAGE).is_file() and (out / TABLE).read_text().count("\n") == 3
    torch.manual_seed(0)
    vaekit.save_model(vaekit.create_model("mlp-vae", input_shape=(1, 8, 8)), tmp_path / "mlp")
    code = main(["diffusability", str(tmp_path / "mlp"), "-o", str(tmp_path / "bad")])
    assert code == 1 and "compares image autoencoders" in capsys.readouterr().err



def test_the_held_out_error_of_the_optimal_denoiser_is_its_closed_form():
    """For data N(μ, σ²) the optimal predictor's ε-MSE at timestep t is Var[ε | x_t] = ᾱσ² / (ᾱσ² + 1 − ᾱ):
    the held-out metric, with its fixed stratified timesteps, must give the mean of that over them, for
    ε and for v prediction (whose output it turns into an ε estimate)."""
    from vaekit.data.base import ImageDataset

    mu, sigma = 0.7, 0.5
    data = mu + sigma * torch.randn(2048, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    dataset = ImageDataset(data, value_range=(-math.inf, math.inf))
    for prediction_type in ("epsilon", "v_prediction"):
        model = denoiser(in_channels=1, sample_size=4, prediction_type=prediction_type)
        model.predict = _gaussian_oracle(model, mu, sigma)
        result = held_out_eps_mse(model, dataset, draws=10)
        alpha_bar = model.scheduler.alphas_cumprod.double()
        timesteps = ((torch.arange(10, dtype=torch.float64) + 0.5) * 100).long()
        a = alpha_bar[timesteps]
        expected = (a * sigma ** 2 / (a * sigma ** 2 + 1 - a)).mean().item()
        # 32,768 squared errors per timestep: a relative standard error of about √(2/32768) ≈ 0.8 %
        assert result["eps_mse"] == pytest.approx(expected, rel=0.03)


def test_the_frechet_distance_against_its_closed_form():
    from vaekit.metrics.frechet import frechet_distance

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(500, 5, generator=generator) @ torch.randn(5, 5, generator=generator)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance(a, a + shift) == pytest.approx((shift ** 2).sum().item(), rel=1e-6)  # same covariance
    scaled = frechet_distance(torch.randn(20000, 2, generator=generator), 2 * torch.randn(20000, 2, generator=generator))
    assert scaled == pytest.approx(2 * (1 + 4 - 2 * 2), rel=0.05)  # N(0, I) against N(0, 4I): Tr = 2·(1 + 4 − 2·2)


@pytest.mark.slow
def test_the_report_refuses_a_verdict_from_a_judge_below_its_bar(tmp_path, capsys, monkeypatch):
    """Labels that say nothing about the images (crops of one photograph dealt at random into 10 folders):
    the judge cannot beat chance on the held-out ones, so the command prints its accuracy and gives no
    verdict by it."""
    from huggingface_hub import constants
    from skimage import data

    from vaekit.diffusion.judge import ACCURACY_BAR

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)
    vaekit.save_model(vaekit.create_model("autoencoder-kl", block_out_channels=(16, 16), layers_per_block=1,
                                          norm_num_groups=8, latent_channels=3), tmp_path / "vae")
    photo, rng = data.astronaut(), np.random.default_rng(0)
    for i in range(80):
        folder = tmp_path / "images" / f"class{rng.integers(10)}"
        folder.mkdir(parents=True, exist_ok=True)
        top, left = rng.integers(0, photo.shape[0] - 32, 2)
        Image.fromarray(photo[top:top + 32:2, left:left + 32:2]).save(folder / f"{i}.png")
    code = main(["diffusability", str(tmp_path / "vae"), "--control", "--data", str(tmp_path / "images"),
                 "--resolution", "16", "--min-latent-side", "8", "--steps", "3", "--batch-size", "8", "--seeds", "0",
                 "--samples", "16",
                 "-o", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("no verdict: the judge's classifier reached") and f"bar of {ACCURACY_BAR}" in printed[0]
    # the shipped meta-study shows no cheap signal's record positive: no order to fall back on
    assert "no measured cheap signal has a track record shown positive" in printed[0] and "by it" not in printed[0]
    assert printed[1].startswith("judge: a classifier of 10 classes trained on") and "held-out accuracy" in printed[1]
    report = json.loads((tmp_path / "out" / "diffusability.json").read_text())
    assert report["judge"]["classifier_held_out_accuracy"] < ACCURACY_BAR and report["judge"]["decided_by"] is None
    assert "sample_classifier_fd" in report["judge"]["refused"]
    assert all(row["floor_sample_classifier_fd"] > 0 for row in report["rows"])  # the floor is reported all the same
