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
    themselves: crops of the whole image, so encoding a file sees what training saw)."""
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
        "loss.disc_weight=0", "train.max_steps=100", "train.epochs=1000", "train.batch_size=8", "train.lr=2e-3",
        "train.progress_bar=false", "train.snapshot_examples=0", f"output_dir={root / 'runs'}"])
    return vaekit.train(config, evaluate_at_end=False, explore=False), root


def test_training_measures_the_scale_and_encode_and_export_give_unit_variance(trained, capsys):
    run, root = trained
    train = read_metrics(run)["train"]
    model = vaekit.load_model(run)
    assert model.config.scaling_factor == train["scaling_factor"] != 0.18215
    assert train["scaling_factor_before"] == 0.18215
    assert train["calibration_images"] == 58  # every training example (58 of the 64 files; 6 are held out)
    files = sorted(str(p) for p in (root / "imgs").glob("*.png"))
    assert main(["encode", *files, "--model", str(run), "-o", str(root / "latents.safetensors")]) == 0
    latents, *_ = load_latents(root / "latents.safetensors")
    assert torch.stack(latents).std().item() == pytest.approx(1.0, abs=0.05)
    assert main(["export-latents", "--model", str(run), "--data", str(root / "imgs"), "-o", str(root / "export")]) == 0
    exported = LatentDataset(root / "export")
    assert torch.stack([item["latent"] for item in exported]).std().item() == pytest.approx(1.0, abs=0.05)
    # Before calibration (SD's factor) they were far from it: the check can fail.
    with torch.no_grad():
        from vaekit.io.images import read_image

        z = model.encode(torch.cat([read_image(f) for f in files])).mean
    assert (z * 0.18215).std().item() < 0.8


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
    latents = torch.stack(load_latents(tmp_path / "l.safetensors")[0]).double()
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
