"""The latent scale: measured at the end of training and by `vaekit calibrate`, stored in the model and in
diffusers exports, so that `vaekit encode` and `export-latents` hand a diffusion model unit-variance latents."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit.cli import main
from vaekit.config import load_config
from vaekit.latents import LatentDataset
from vaekit.io.latents import load_latents
from vaekit.runs import read_metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small KL autoencoder trained 100 steps on 64 smooth 32×32 images (the training set is the files
    themselves: crops of the whole image, so encoding a file sees what training saw). Its KL weight (0.1)
    leaves the posterior variance a large share of the latents' (means alone: std ≈ 0.74 of the samples'),
    so a scale measured or applied on means anywhere would miss by far more than the 5 % asserted."""
    root = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir()
    for i in range(64):
        small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC).save(root / "imgs" / f"{i:02d}.png")
    config = load_config(None, [
        "model.name=autoencoder-kl", "model.block_out_channels=[16,32]", "model.norm_num_groups=8",
        "model.layers_per_block=1", "model.latent_channels=4", "data.name=folder-crops", f"data.path={root / 'imgs'}",
        "data.crop_size=32", "data.short_side=null", "data.test_fraction=0.1", "loss.perceptual_weight=0",
        "loss.kl_weight=0.1", "loss.disc_weight=0", "train.max_steps=100", "train.epochs=1000", "train.batch_size=8", "train.lr=2e-3",
        "train.progress_bar=false", "train.snapshot_examples=0", f"output_dir={root / 'runs'}"])
    return vaekit.train(config, evaluate_at_end=False, explore=False), root


def test_training_measures_the_scale_and_what_stage_b_trains_on_has_unit_variance(trained):
    """The one convention (LDM's): the factor is 1/std of posterior samples, the export keeps means and
    log-variances, and Stage B draws samples from them. On this under-trained model the posterior variance
    is a large share of the total, so a rule that used means anywhere would miss by far more than 5 %."""
    from vaekit.diffusion.data import LatentsConfig, latents

    run, root = trained
    train = read_metrics(run)["train"]
    model = vaekit.load_model(run)
    assert model.config.scaling_factor == train["scaling_factor"] != 0.18215
    assert train["scaling_factor_before"] == 0.18215
    assert train["calibration_images"] == 58  # every training example (58 of the 64 files; 6 are held out)
    assert "patch_size" not in train  # a KL run folds nothing: its metrics.json is what it was before patch_size
    assert main(["export-latents", "--model", str(run), "--data", str(root / "imgs"), "-o", str(root / "export")]) == 0
    exported = LatentDataset(root / "export")
    means = torch.stack([item["latent"] for item in exported]).double()
    assert means.std().item() < 0.85  # the means alone are far from unit variance...
    split = latents(LatentsConfig(str(root / "export")), "train")
    samples, _ = split.__getitems__(list(range(len(split))))
    assert samples.double().std().item() == pytest.approx(1.0, abs=0.05)  # ... what the denoiser sees is not
    # fresh draws each epoch, the same ones when an epoch is read again (so a resumed run is exact)
    again, _ = split.__getitems__(list(range(len(split))))
    split.set_epoch(1)
    next_epoch, _ = split.__getitems__(list(range(len(split))))
    assert torch.equal(samples, again) and not torch.equal(samples, next_epoch)
    torch.testing.assert_close(next_epoch.double().mean(0), samples.double().mean(0), atol=0.5, rtol=0)
    # Before calibration (SD's factor) they were far from it: the check can fail.
    assert (means / model.config.scaling_factor * 0.18215).std().item() < 0.8
    # best/ (the weights of the best validation) carries its own measured factor, not an earlier one
    from vaekit.io.images import read_image

    best = vaekit.load_model(run / "best")
    images = torch.cat([read_image(f) for f in sorted((root / "imgs").glob("*.png"))])
    with torch.no_grad():
        z = best.encode(images).sample(torch.Generator().manual_seed(0))
    assert best.scale_latents(z).std().item() == pytest.approx(1.0, abs=0.05)
    assert best.config.scaling_factor != 0.18215


def test_encode_keeps_the_means_and_log_variances_whose_samples_have_unit_variance(trained):
    run, root = trained
    files = sorted(str(p) for p in (root / "imgs").glob("*.png"))
    assert main(["encode", *files, "--model", str(run), "-o", str(root / "latents.safetensors")]) == 0
    stored = load_latents(root / "latents.safetensors")
    mean, logvar = torch.stack(stored.latents), torch.stack(stored.logvars)
    sample = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    assert sample.std().item() == pytest.approx(1.0, abs=0.05)
    assert stored.norm == vaekit.load_model(run).latent_norm


def test_per_channel_calibration_is_honoured_by_export_stage_b_and_diffusers(trained, tmp_path):
    from diffusers import AutoencoderKL

    from vaekit.diffusion.data import LatentsConfig, latents
    from vaekit.diffusion.sampling import decode_latents

    run, root = trained
    assert main(["calibrate", "--model", str(run), "--per-channel", "-o", str(tmp_path / "pc")]) == 0
    model = vaekit.load_model(tmp_path / "pc")
    assert model.config.scaling_factor == 1.0 and len(model.config.latents_std) == 4
    assert main(["export-latents", "--model", str(tmp_path / "pc"), "--data", str(root / "imgs"),
                 "-o", str(tmp_path / "export")]) == 0
    split = latents(LatentsConfig(str(tmp_path / "export")), "train")
    samples, _ = split.__getitems__(list(range(len(split))))
    channel_std = samples.double().transpose(0, 1).reshape(4, -1).std(1)
    torch.testing.assert_close(channel_std, torch.ones(4, dtype=torch.float64), atol=0.07, rtol=0)
    # decoding undoes the per-channel statistics, as diffusers' pipelines do, and diffusers reads them back
    with torch.no_grad():
        direct = model.decode(model.unscale_latents(samples[:4])).clamp(-1, 1)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    torch.testing.assert_close(decode_latents(model, samples[:4], manifest), direct)
    assert main(["convert", str(tmp_path / "pc"), "-o", str(tmp_path / "d"), "--format", "diffusers"]) == 0
    config = AutoencoderKL.from_pretrained(tmp_path / "d").config
    assert list(config.latents_mean) == pytest.approx(list(model.config.latents_mean), rel=1e-12)
    assert vaekit.load_model(tmp_path / "d", norm_num_groups=8).latent_norm == model.latent_norm


def test_diffusers_exports_carry_the_measured_factor(trained):
    from diffusers import AutoencoderKL

    run, root = trained
    assert main(["convert", str(run), "-o", str(root / "diffusers"), "--format", "diffusers"]) == 0
    factor = vaekit.load_model(run).config.scaling_factor
    assert AutoencoderKL.from_pretrained(root / "diffusers").config.scaling_factor == pytest.approx(factor, rel=1e-12)


def test_the_calibrate_command_matches_the_trainer_and_measures_a_shift(trained, tmp_path, capsys):
    run, root = trained
    measured = vaekit.load_model(run).config.scaling_factor
    copy = tmp_path / "model"
    assert main(["convert", str(run), "-o", str(copy)]) == 0
    (copy / "config.json").write_text((copy / "config.json").read_text().replace(str(measured), "0.5"))
    # On the run's own training examples, as the trainer measured: the same number.
    assert main(["calibrate", "--model", str(run), "-o", str(copy)]) == 0
    assert vaekit.load_model(copy).config.scaling_factor == pytest.approx(measured, rel=1e-6)
    # On a folder, with a shift (SD3/FLUX style), in place in a diffusers folder.
    assert main(["convert", str(run), "-o", str(tmp_path / "d"), "--format", "diffusers"]) == 0
    assert main(["calibrate", "--model", str(tmp_path / "d"), "--data", str(root / "imgs"), "--resolution", "32",
                 "--shift"]) == 0
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["shift_factor"] is not None and "shift" in capsys.readouterr().out
    model = vaekit.load_model(tmp_path / "d")
    files = sorted(str(p) for p in (root / "imgs").glob("*.png"))
    assert main(["encode", *files, "--model", str(tmp_path / "d"), "--sample", "-o", str(tmp_path / "l.safetensors")]) == 0
    latents = torch.stack(load_latents(tmp_path / "l.safetensors").latents).double()
    assert latents.mean().item() == pytest.approx(0.0, abs=0.05) and latents.std().item() == pytest.approx(1.0, abs=0.05)
    assert model.config.shift_factor == config["shift_factor"]


def test_calibrate_refuses_what_it_cannot_store_or_measure(trained, tmp_path, capsys):
    from safetensors.torch import save_file

    run, root = trained
    vaekit.save_model(vaekit.load_model(run), tmp_path / "m")
    assert main(["calibrate", "--model", str(tmp_path / "m")]) == 1
    assert "is not a run directory: give --data" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "nowhere")]) == 1
    assert "no such folder" in capsys.readouterr().err
    torch.manual_seed(0)
    single = vaekit.create_model("autoencoder-kl", block_out_channels=(32, 32), layers_per_block=1)
    save_file({k: v.contiguous() for k, v in single.state_dict().items()}, tmp_path / "vae.safetensors")
    assert main(["calibrate", "--model", str(tmp_path / "vae.safetensors"), "--data", str(root / "imgs"),
                 "--resolution", "32", "--images", "4"]) == 1
    assert "single weights file, which has no config to record the factor in: give -o OUT" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(tmp_path / "vae.safetensors"), "--data", str(root / "imgs"),
                 "--resolution", "32", "--images", "4", "-o", str(tmp_path / "out")]) == 0
    assert vaekit.load_model(tmp_path / "out").config.scaling_factor != 0.18215


def test_a_latent_norm_records_patch_size_only_where_it_folds():
    """Unfolded records keep the keys they had before ``patch_size`` (older readers and files stay the same); a
    record without it reads back as folding nothing, and a folded one keeps it."""
    from vaekit.models.latent_scale import LatentNorm

    plain, folded = LatentNorm(0.5, 0.1), LatentNorm(1.0, None, (0.0,) * 4, (1.0,) * 4, patch_size=2)
    assert set(plain.to_dict()) == {"scaling_factor", "shift_factor", "latents_mean", "latents_std"}
    assert folded.to_dict()["patch_size"] == 2
    assert [LatentNorm.from_manifest(norm.to_dict()) for norm in (plain, folded)] == [plain, folded]
