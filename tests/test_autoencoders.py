"""Autoencoders vaekit did not train, scored on a user's own folder: ``vaekit eval --model M --data FOLDER``;
and a run's evaluation scoring both its final weights and best/."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_same_network_output
from vaekit.cli import main


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Three of scikit-image's photographs, of different sizes and aspect ratios, one in a sub-folder."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg", quality=95)
    Image.fromarray(data.chelsea()).save(folder / "more" / "chelsea.png")
    return folder


def _diffusers_vae(path):
    import diffusers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                                  layers_per_block=1, sample_size=32)
    vae.save_pretrained(path)
    return vae.eval()


def _as_diffusion_sees_it(path, size):
    """The photograph with its short side resized to ``size`` (bicubic) and centre-cropped, in [-1, 1]."""
    image = Image.open(path).convert("RGB")
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                         Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] / 127.5 - 1


def test_eval_scores_a_diffusers_autoencoder_on_a_folder(tmp_path, photo_folder, capsys):
    vae = _diffusers_vae(tmp_path / "vae")
    out = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(tmp_path / "vae"), "--data", str(photo_folder), "--resolution", "32",
                 "--device", "cpu", "-o", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["num_examples"] == 3 and metrics["latent_shape"] == [4, 16, 16]
    assert metrics["compression_ratio"] == pytest.approx(3 * 32 * 32 / (4 * 16 * 16))
    # the same reconstruction as diffusers' own calls on the images prepared independently (the crop's
    # rounding may differ by one grey level at most: the bound is a PSNR change far below 0.1 dB)
    names = ["astronaut.png", "coffee.jpg", "more/chelsea.png"]
    x = torch.cat([_as_diffusion_sees_it(photo_folder / name, 32) for name in names])
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    psnr = (10 * torch.log10(4 / (y.double() - x.double()).pow(2).flatten(1).mean(1))).mean().item()
    assert metrics["psnr"] == pytest.approx(psnr, abs=0.05)
    for key in ("latent_hf_fraction", "equivariance_mse_rotate_90", "equivariance_mse_scale_0.5",
                "encode_s_per_image", "decode_s_per_image", "estimated_memory_mb"):
        assert metrics[key] > 0, key
    assert "psnr" in capsys.readouterr().out


def test_eval_of_a_model_says_what_it_needs(tmp_path, photo_folder, capsys):
    import vaekit

    assert main(["eval", "--model", str(tmp_path / "nothing"), "--data", str(photo_folder)]) == 1
    assert "no such model folder" in capsys.readouterr().err
    vaekit.save_model(vaekit.create_model("mlp-vae", input_shape=(1, 8, 8)), tmp_path / "mlp")
    assert main(["eval", "--model", str(tmp_path / "mlp"), "--data", str(photo_folder)]) == 1
    assert "scores image autoencoders" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "mlp")]) == 1
    assert "give both" in capsys.readouterr().err


def test_a_runs_evaluation_scores_its_best_weights_too(tmp_path, tiny):
    import vaekit
    from vaekit.evaluation import evaluate

    run = vaekit.train(tiny(**{"train.validate_every": 4}), evaluate_at_end=False, explore=False, device="cpu")
    assert (run / "best" / "config.json").is_file()
    final = evaluate(run, device="cpu")
    stored = json.loads((run / "metrics.json").read_text())
    assert stored["test"]["negative_elbo"] == pytest.approx(final["negative_elbo"])
    # best/ scored by the same function on the same split: what evaluating a copy of best/ as a run gives
    best_model = vaekit.load_model(run / "best")
    final_model = vaekit.load_model(run)
    same = all(torch.equal(a, b) for a, b in zip(best_model.state_dict().values(), final_model.state_dict().values()))
    assert ("test_best" in stored) and (same == (stored["test_best"]["negative_elbo"] == final["negative_elbo"]))


def test_a_fine_tune_validates_where_it_started(tmp_path):
    """model.init_from: the starting weights are validated before the first step (a row of train_log.jsonl
    marked start, and metrics.json's start), scored as the source itself scores, never taken for best/;
    the report says whether the best weights beat them."""
    import vaekit
    from vaekit.config import load_config
    from vaekit.data import build_dataset
    from vaekit.metrics.image import per_image_psnr

    _diffusers_vae(tmp_path / "source")
    config = load_config(None, [f"model.init_from={tmp_path / 'source'}", "data.name=photos", "data.crop_size=32",
                                "data.num_train=8", "loss.perceptual_weight=0", "loss.disc_weight=0", "train.epochs=2",
                                "train.batch_size=4", "train.progress_bar=false", "train.snapshot_examples=0",
                                "train.validation_examples=4", "train.validate_every=2", f"output_dir={tmp_path}",
                                "run_name=ft"])
    run = vaekit.train(config, evaluate_at_end=False, explore=False, device="cpu")
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    validations = [row for row in rows if "validation" in row]
    assert validations[0]["step"] == 0 and validations[0].get("start") is True
    assert all("start" not in row for row in validations[1:]) and validations[1]["step"] > 0
    # the start row is the source model's own score on the same held-out subset
    test = build_dataset(config.data, "test")
    x = test.__getitems__(test.spread_indices(4, config.seed))[0] * 2 - 1
    source = vaekit.load_model(tmp_path / "source")
    with torch.no_grad():
        psnr = per_image_psnr(source.decode(source.encode(x).mode()).clamp(-1, 1), x).mean().item()
    assert validations[0]["validation"]["psnr"] == pytest.approx(psnr, rel=1e-5)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["start"]["validation"]["psnr"] == validations[0]["validation"]["psnr"]
    assert json.loads((run / "best" / "best.json").read_text())["step"] > 0
    from vaekit.reports import start_comparison

    best = json.loads((run / "best" / "best.json").read_text())["validation"]["psnr"]
    line = start_comparison(run, metrics)[0]  # the report's notes open with it
    assert line.startswith(f"Where it started: {tmp_path / 'source'} validated at psnr {psnr:.4g} before the first step")
    assert line.endswith(("better than where it started." if best > psnr else "not better than where it started."))


# --- every diffusers image autoencoder ---------------------------------------------------------------------

TINY = {  # a small random instance of each class (f = 2 or 8 pixels a latent, 4 or 64 channels)
    "AsymmetricAutoencoderKL": dict(
        down_block_out_channels=(32, 32), up_block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_down_block=1, layers_per_up_block=1, latent_channels=4,
        norm_num_groups=32, sample_size=32, scaling_factor=0.18215),
    "AutoencoderTiny": dict(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
                            num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4),
    "AutoencoderDC": dict(
        latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), upsample_block_type="interpolate",
        downsample_block_type="stride_conv", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407),
    "AutoencoderKLFlux2": dict(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=32, patch_size=(2, 2)),
    "AutoencoderKLQwenImage": dict(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                   latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 2.0, 0.5, 1.0]),
    "AutoencoderKLWan": dict(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                             latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 2.0, 0.5, 1.0],
                             scale_factor_spatial=2, scale_factor_temporal=1),
    "AutoencoderKLHunyuanImage": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                                      layers_per_block=1, spatial_compression_ratio=2, sample_size=32,
                                      scaling_factor=0.75),
    "AutoencoderRAE": dict(
        encoder_type="dinov2", encoder_hidden_size=64, encoder_patch_size=8, encoder_num_hidden_layers=1,
        decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
        decoder_intermediate_size=64, patch_size=8, encoder_input_size=32),
    "ConsistencyDecoderVAE": dict(
        latent_channels=4, encoder_out_channels=4, encoder_block_out_channels=(32, 32),
        encoder_down_block_types=("DownEncoderBlock2D",) * 2, encoder_layers_per_block=1,
        decoder_block_out_channels=(32, 32), decoder_layers_per_block=1,
        decoder_down_block_types=("ResnetDownsampleBlock2D",) * 2, decoder_up_block_types=("ResnetUpsampleBlock2D",) * 2,
        sample_size=32),
}


def _tiny(name, folder):
    import diffusers

    torch.manual_seed(0)
    module = getattr(diffusers, name)(**TINY[name])
    if name == "AutoencoderKLFlux2":  # statistics as a trained model has them (a fresh one: mean 0, var 1)
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    module.save_pretrained(folder)
    return module.eval()


def _class_calls(name, module, x):
    """The raw latent and its decoding, by the class's own calls as its pipelines make them."""
    if name in ("AutoencoderKLQwenImage", "AutoencoderKLWan"):  # one frame of a video
        z = module.encode(x.unsqueeze(2)).latent_dist.mode()[:, :, 0]
        return z, module.decode(z.unsqueeze(2)).sample[:, :, 0]
    if name == "AutoencoderRAE":
        z = module.encode((x + 1) / 2).latent
        return z, module.decode(z).sample * 2 - 1
    if name in ("AutoencoderTiny", "AutoencoderDC"):
        out = module.encode(x)
        z = out.latents if name == "AutoencoderTiny" else out.latent
        return z, module.decode(z).sample
    z = module.encode(x).latent_dist.mode()
    if name == "ConsistencyDecoderVAE":
        return z, module.decode(z, generator=torch.Generator().manual_seed(0)).sample
    return z, module.decode(z).sample


def _pipeline_latents(name, module, z):
    """What each family's diffusers pipeline hands its diffusion model, written out as the pipeline does."""
    config = module.config
    if name in ("AutoencoderTiny", "AutoencoderRAE"):
        return z
    if name in ("AutoencoderKLQwenImage", "AutoencoderKLWan"):  # on the 5-D latent, with 1 / std
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
        return ((z.unsqueeze(2) - mean) * inverse_std)[:, :, 0]
    if name == "AutoencoderKLFlux2":
        b, c, h, w = z.shape
        patched = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        mean = module.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(module.bn.running_var.view(1, -1, 1, 1) + config.batch_norm_eps)
        return (patched - mean) / std
    return z * config.scaling_factor


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_diffusers_autoencoder_is_loaded_evaluated_and_normalised_as_its_pipeline_does(name, tmp_path,
                                                                                              photo_folder):
    import vaekit

    module = _tiny(name, tmp_path / name)
    model = vaekit.load_model(tmp_path / name)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z, images = _class_calls(name, module, x)
        assert_same_network_output(model.encode(x).mode(), z)
        assert_same_network_output(model.decode(z), images)
        latents = _pipeline_latents(name, module, z)
        torch.testing.assert_close(model.scale_latents(z), latents, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.unscale_latents(latents), z, rtol=1e-5, atol=1e-5)
    out = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(tmp_path / name), "--data", str(photo_folder), "--resolution", "32",
                 "--device", "cpu", "-o", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["latent_shape"] == list(z.shape[1:]) and metrics["num_examples"] == 3
    assert metrics["compression_ratio"] == pytest.approx(3 * 32 * 32 / z[0].numel())
    assert np.isfinite(metrics["psnr"]) and metrics["latent_hf_fraction"] >= 0
    assert metrics["estimated_memory_mb"] is not None or metrics["memory_note"].startswith("not estimated")


def test_a_class_vaekit_does_not_know_gets_one_line_naming_what_it_loads(tmp_path, photo_folder, capsys):
    from diffusers import UNet2DModel

    UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).save_pretrained(tmp_path / "u")
    assert main(["eval", "--model", str(tmp_path / "u"), "--data", str(photo_folder)]) == 1
    error = capsys.readouterr().err.strip()
    assert "vaekit cannot load a diffusers UNet2DModel: it loads the image autoencoders" in error
    assert "AutoencoderKLFlux2" in error and "AutoencoderRAE" in error and len(error.splitlines()) == 1


def test_compare_puts_every_model_on_the_same_images(tmp_path, photo_folder, capsys):
    """The leaderboard: a vaekit-loaded diffusers AutoencoderKL and a wrapped TAESD on one folder; each row
    is that model's own `vaekit eval --model` on the same images, sorted by PSNR; the page shows both."""
    import csv

    from vaekit.evaluation import evaluate_model

    _diffusers_vae(tmp_path / "kl")
    _tiny("AutoencoderTiny", tmp_path / "taesd")
    out = tmp_path / "board"
    assert main(["compare", str(tmp_path / "kl"), "--model", str(tmp_path / "taesd"), "--data", str(photo_folder),
                 "--resolution", "32", "--device", "cpu", "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert {row["model"] for row in rows} == {"kl", "taesd"}
    psnr = [float(row["psnr"]) for row in rows]
    assert psnr == sorted(psnr, reverse=True)
    report = json.loads((out / "compare.json").read_text())
    for row in report["models"]:
        alone = evaluate_model(row["source"], photo_folder, resolution=32, device="cpu")
        assert row["psnr"] == pytest.approx(alone["psnr"], rel=1e-9) and row["latent_shape"] == alone["latent_shape"]
    page = (out / "compare.html").read_text()
    assert all(name in page for name in ("kl", "taesd", "decoded", "zoomed", "quality"))
    assert "leaderboard:" in capsys.readouterr().out


@pytest.mark.slow
def test_every_class_is_a_row_of_one_leaderboard(tmp_path, photo_folder, capsys):
    import csv

    _diffusers_vae(tmp_path / "AutoencoderKL")
    for name in TINY:
        _tiny(name, tmp_path / name)
    names = ["AutoencoderKL", *sorted(TINY)]
    assert main(["compare", *(str(tmp_path / name) for name in names), "--data", str(photo_folder),
                 "--resolution", "32", "--device", "cpu", "-o", str(tmp_path / "board")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "board" / "compare.csv")))
    assert sorted(row["model"] for row in rows) == sorted(names)
    assert all(row["psnr"] != "n/a" and row["latent_shape"] != "n/a" for row in rows)
    capsys.readouterr()
