"""Representation autoencoders (model.name=rae): a tiny random DINOv2-with-registers encoder that the tests
save themselves (no download), trained with vaekit's trainer, exported as diffusers' AutoencoderRAE folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vaekit.cli import main

TINY_DECODER = {"model.encoder_input_size": 32, "model.patch_size": 4, "model.decoder_hidden_size": 32,
                "model.decoder_num_hidden_layers": 1, "model.decoder_num_attention_heads": 2,
                "model.decoder_intermediate_size": 64}
"""A 1-layer ViT decoder: 8×8 tokens of the tiny encoder (patch 4 at 32²) back to 32² images."""


def save_tiny_encoder(folder, **changes):
    """A random DINOv2 with registers shaped as diffusers' AutoencoderRAE rebuilds one (64-wide heads, 518² position
    grid), its final layer norm given a non-trivial affine so that dropping it (as RAE does) shows."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(**{"hidden_size": 64, "patch_size": 4, "image_size": 518,
                                          "num_attention_heads": 1, "num_hidden_layers": 2, **changes})
    encoder = Dinov2WithRegistersModel(config)
    with torch.no_grad():
        encoder.layernorm.weight.uniform_(0.5, 1.5)
        encoder.layernorm.bias.uniform_(-0.2, 0.2)
    encoder.save_pretrained(folder)
    return encoder.eval()


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    save_tiny_encoder(folder)
    return folder


def rae_overrides(tmp_path, encoder, **extra) -> list[str]:
    values = {"model.name": "rae", "model.encoder": str(encoder), **TINY_DECODER, "data.name": "objects",
              "data.num_train": 16, "data.num_test": 8, "loss.lpips_pretrained": "false", "loss.disc_start": 2,
              "train.max_steps": 4, "train.batch_size": 4, "train.lr": 1e-3, "train.ema_decay": 0.9,
              "train.checkpoint_every": 2, "train.validation_examples": 8, "train.snapshot_examples": 0,
              "train.progress_bar": "false", "output_dir": str(tmp_path / "runs"), **extra}
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, encoder_dir):
    """4 steps of the whole command (validation, evaluation and the GAN from step 2 included)."""
    return train_rae(tmp_path_factory.mktemp("trained"), encoder_dir, "rae", explore=True)


def train_rae(tmp_path, encoder, name, *flags, explore=False, **extra):
    assert main(["train", *rae_overrides(tmp_path, encoder, run_name=name, **extra), "--device", "cpu",
                 *([] if explore else ["--no-explore"]), *flags]) == 0
    return tmp_path / "runs" / name


def encoder_weights_without_final_affine(encoder_dir):
    """The encoder's weights by the names its transformers class gives them (as diffusers saves them)."""
    from transformers import Dinov2WithRegistersModel

    weights = Dinov2WithRegistersModel.from_pretrained(encoder_dir).state_dict()
    assert len(weights) > 20
    return {key: value for key, value in weights.items() if key not in ("layernorm.weight", "layernorm.bias")}


def test_training_keeps_the_encoder_bitwise_trains_only_the_decoder_and_exports_an_autoencoder_rae(trained_run,
                                                                                                  encoder_dir):
    from diffusers import AutoencoderRAE

    import vaekit

    run = trained_run
    exported = load_file(run / "model" / "diffusion_pytorch_model.safetensors")
    for key, value in encoder_weights_without_final_affine(encoder_dir).items():
        assert torch.equal(exported[f"encoder.{key}"], value), key
    assert "encoder.layernorm.weight" not in exported and "encoder.layernorm.bias" not in exported

    # The decoder trained between the two checkpoints; the optimizer holds state for the decoder alone.
    early = load_file(run / "checkpoints" / "step-00000002" / "model.safetensors")
    late = load_file(run / "checkpoints" / "step-00000004" / "model.safetensors")
    decoder = [key for key in late if key.startswith("module.decoder.") and "pos_embed" not in key]
    assert all(not torch.equal(early[key], late[key]) for key in decoder)
    assert all(torch.equal(early[key], late[key]) for key in late if key.startswith("module.encoder."))
    trainer = load_file(run / "checkpoints" / "step-00000004" / "trainer.safetensors")
    moments = sorted(tuple(v.shape) for k, v in trainer.items() if k.startswith("optimizer.model.") and
                     k.endswith("exp_avg"))
    assert moments == sorted(tuple(late[key].shape) for key in decoder)

    # diffusers loads the folder unchanged, and decodes as vaekit's model (the EMA weights it saved) does.
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderRAE" and config["noise_tau"] == 0.0
    diffusers_model = AutoencoderRAE.from_pretrained(run / "model").eval()
    trained = vaekit.load_model(run / "checkpoints" / "step-00000004")
    ema = {key[len("module.ema.shadow."):]: value for key, value in trainer.items()
           if key.startswith("module.ema.shadow.")}
    trained.load_state_dict(ema)
    z = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(1))
    # The saved model normalises the tokens per channel inside (measured at the end of training; a checkpoint's
    # model does not yet): its decode takes them normalised.
    mean, std = torch.tensor(config["latents_mean"]), torch.tensor(config["latents_std"])
    normalised = (z - mean) / (std + 1e-5)
    with torch.no_grad():
        ours = trained.decode(z)
        theirs = diffusers_model.decode(normalised).sample * 2 - 1
        wrapped = vaekit.load_model(run / "model").decode(normalised)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(wrapped, theirs, rtol=0, atol=1e-5)
    assert ours.shape == (2, 3, 32, 32)
    assert AutoencoderRAE.from_pretrained(run / "best") is not None
    steps = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    logged = next(row for row in steps if "loss" in row)  # the GAN ran from step 2, weighted at decoder_pred
    assert logged["d_weight"] > 0 and "d_loss" in logged and "lpips" in logged
    assert "psnr" in next(row for row in steps if "validation" in row)["validation"]


def test_the_encoder_tokens_are_dinov2s_final_layer_norm_without_its_affine(encoder_dir):
    """RAE drops the affine weights of the encoder's last layer norm (bytetriper/RAE, Dinov2withNorm) and takes the
    patch tokens after the CLS and 4 register tokens, from images normalised by ImageNet's statistics."""
    import vaekit

    reference = save_tiny_encoder(encoder_dir.parent / "again")
    model = vaekit.create_model("rae", encoder=str(encoder_dir), **{k.split(".")[1]: v for k, v in TINY_DECODER.items()})
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = reference((((x + 1) / 2) - mean) / std, output_hidden_states=True).hidden_states[-1]
        tokens = F.layer_norm(hidden, (64,), eps=reference.config.layer_norm_eps)[:, 5:]
        expected = tokens.transpose(1, 2).reshape(2, 64, 8, 8) / (1 + 1e-5)  # diffusers' (z − 0) / (1 + 1e-5)
        torch.testing.assert_close(model.encode(x).mean, expected, rtol=0, atol=1e-5)
    assert not model.module.encoder.training and not any(p.requires_grad for p in model.module.encoder.parameters())
    model.train()
    assert model.module.decoder.training and not model.module.encoder.training


def test_the_latent_noise_is_sigma_uniform_up_to_tau_times_a_standard_normal_and_only_while_training(encoder_dir):
    import vaekit

    model = vaekit.create_model("rae", encoder=str(encoder_dir), noise_tau=0.8,
                                **{k.split(".")[1]: v for k, v in TINY_DECODER.items()})
    z = torch.zeros(3, 64, 8, 8)
    noise = model.latent_noise(z, torch.Generator().manual_seed(5))
    draws = torch.Generator().manual_seed(5)
    u = 0.5 * (1 + torch.erf(torch.randn(3, 1, 1, 1, generator=draws) / 2 ** 0.5))  # Φ of a normal draw: U(0, 1)
    torch.testing.assert_close(noise, 0.8 * u * torch.randn(3, 64, 8, 8, generator=draws))
    many = model.latent_noise(torch.zeros(20000, 1, 1, 1), torch.Generator().manual_seed(0)).flatten()
    # σ·ε with σ ~ U(0, 0.8): E = 0, E[x²] = E[σ²] = 0.8² / 3 (sd of the estimate ≈ 0.0037)
    assert abs(many.mean().item()) < 0.02 and abs(many.pow(2).mean().item() - 0.64 / 3) < 0.015
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).z, model.encode(x).mean)
        model.train()
        assert not torch.equal(model(x).z, model.encode(x).mean)


def test_the_rae_loss_preset_is_twice_raes_l1_plus_lpips_on_images_in_0_1():
    """RAE's reconstruction loss is mean |x − x̂| on [0, 1] images + LPIPS; vaekit's L1 is on [−1, 1] (twice it),
    so the preset weighs LPIPS by 2 and the loss is exactly twice RAE's."""
    from vaekit.config import build_dataclass
    from vaekit.losses.lpips_gan import LPIPSWithDiscriminator
    from vaekit.models.distributions import DiagonalGaussian
    from vaekit.models.rae import RAEOutput
    from vaekit.registry import LOSSES

    entry = LOSSES.get("rae-lpips-gan")
    config = build_dataclass(entry.config_cls, {**entry.defaults, "lpips_pretrained": False}, "loss")
    loss_fn = LPIPSWithDiscriminator(config)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    x_hat = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    tokens = torch.randn(2, 64, 8, 8, generator=generator)
    output = RAEOutput(DiagonalGaussian(tokens, torch.zeros_like(tokens), deterministic=True), tokens, x_hat)
    loss, logs = loss_fn(x, output, step=0)
    lpips = loss_fn._perceptual[0](x, x_hat).mean()
    rae_loss = ((x_hat + 1) / 2 - (x + 1) / 2).abs().mean() + lpips
    torch.testing.assert_close(loss, 2 * rae_loss)
    assert config.disc_weight == 0.75 and config.disc_loss == "hinge" and "g_loss" not in logs


@pytest.mark.slow
def test_resuming_an_rae_run_ends_with_the_uninterrupted_runs_weights(tmp_path, encoder_dir, trained_run):
    whole = trained_run
    half = train_rae(tmp_path, encoder_dir, "half", "--no-eval", **{"train.max_steps": 2})
    assert main(["train", "--resume", str(half), "train.max_steps=4", "--device", "cpu", "--no-eval",
                 "--no-explore"]) == 0
    resumed = load_file(half / "model" / "diffusion_pytorch_model.safetensors")
    for key, value in load_file(whole / "model" / "diffusion_pytorch_model.safetensors").items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.parametrize("problem, expected", [
    ("missing", "is not a transformers model folder or hub name that loads here"),
    ("vit", "is a vit model; RAE's encoders are"),
    ("heads", "has num_attention_heads=2, and diffusers' AutoencoderRAE rebuilds its encoder with num_attention_heads=1"),
])
def test_an_encoder_rae_cannot_take_gets_a_clear_error(problem, expected, tmp_path, capsys):
    folder = tmp_path / "encoder"
    folder.mkdir()
    if problem == "vit":
        from transformers import ViTConfig

        ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=64).save_pretrained(folder)
    elif problem == "heads":
        save_tiny_encoder(folder, num_attention_heads=2)
    assert main(["train", *rae_overrides(tmp_path, folder), "--device", "cpu"]) == 1
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error


def test_data_of_another_size_than_the_decoder_gives_and_latent_regularisers_are_refused(tmp_path, encoder_dir,
                                                                                        capsys):
    assert main(["train", *rae_overrides(tmp_path, encoder_dir, **{"data.image_size": 64}), "--device", "cpu"]) == 1
    assert "decodes 32×32 RGB images (patch_size 4 × 8 tokens a side) and objects/train has 3×64×64" in capsys.readouterr().err
    assert main(["train", *rae_overrides(tmp_path, encoder_dir, **{"loss.eqvae_prob": 0.5}), "--device", "cpu"]) == 1
    assert "keeps its pretrained encoder frozen" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_train_the_decoder_as_one_process_does(tmp_path, encoder_dir, trained_run):
    """Accelerate's two processes split each global batch of 4; the latent noise is drawn per global batch, so the
    losses are the one-process run's up to float rounding, and the frozen encoder is bitwise the same. The decoder's
    weights differ by rounding: gradients summed in another order (and the adaptive GAN weight, a ratio of their
    norms) fed to Adam. Where a gradient component is near zero, a rounding-sized change can flip the sign of Adam's
    normalised step m̂/√v̂, so no bound proportional to float32's eps holds element by element; what holds whatever
    the order is Adam's own: with 1 − β1 ≤ √(1 − β2) (RAE's β = (0.9, 0.95): 0.1 ≤ 0.224) each step moves each
    element by at most lr (Kingma & Ba 2015, section 2.1), so two runs fed any gradients differ by at most 2·lr per
    step, and the saved EMA weights (convex combinations of the weights) by at most 2·lr·steps."""
    import os
    import subprocess
    import sys

    from vaekit.runs import read_log

    args = rae_overrides(tmp_path, encoder_dir, run_name="two")
    result = subprocess.run([sys.executable, "-m", "vaekit", "-q", "train", *args, "--device", "cpu", "--no-eval",
                             "--no-explore", "--num-processes=2"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "runs" / "two"
    losses = [[row["loss"] for row in read_log(run) if "loss" in row] for run in (two, trained_run)]
    assert len(losses[0]) == len(losses[1]) > 0
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-5, atol=0)
    ours = load_file(two / "model" / "diffusion_pytorch_model.safetensors")
    theirs = load_file(trained_run / "model" / "diffusion_pytorch_model.safetensors")
    # The latent statistics are measured at the end by the main process on its own share of the training data
    # (as every model's calibration is), so they are compared by shape only.
    statistics = {"_latents_mean", "_latents_std"}
    encoder = {key for key in ours if key.startswith("encoder.")}
    assert encoder and all(torch.equal(ours[key], theirs[key]) for key in encoder)
    lr, steps = 1e-3, 4  # rae_overrides' train.lr and train.max_steps (no weight decay)
    difference = max((ours[key] - theirs[key]).abs().max().item() for key in set(ours) - statistics - encoder)
    assert difference <= 2 * lr * steps
    assert all(ours[key].shape == theirs[key].shape == (64, 1, 1) for key in statistics)


def test_the_preset_holds_raes_dinov2_b_recipe():
    """configs/rae-dinov2-b.yaml against bytetriper/RAE configs/stage1/training/DINOv2-B_decXL.yaml and
    configs/decoder/ViTXL/config.json (docs/rae.md)."""
    from pathlib import Path

    from vaekit.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "rae-dinov2-b.yaml", ["data.path=photos"])
    model, data, loss, train = config.model.params, config.data.params, config.loss.params, config.train
    assert (config.model.name, model.encoder, model.encoder_input_size, model.patch_size, model.noise_tau) == (
        "rae", "facebook/dinov2-with-registers-base", 224, 16, 0.8)
    assert (model.decoder_hidden_size, model.decoder_num_hidden_layers, model.decoder_num_attention_heads,
            model.decoder_intermediate_size) == (1152, 28, 16, 4096)
    assert (data.crop_size, data.short_side, data.flip) == (256, 384, False)
    assert (config.loss.name, loss.perceptual_weight, loss.reduction, loss.disc_weight, loss.disc_loss) == (
        "rae-lpips-gan", 2.0, "mean", 0.75, "hinge")
    assert loss.disc_start == 8 * 2502  # RAE's epoch 8 on ImageNet-1k (1,281,167 images) at a batch of 512
    assert (train.batch_size, train.lr, train.epochs, train.ema_decay, train.grad_clip, train.weight_decay) == (
        512, 2e-4, 16, 0.9978, None, 0.0)
    assert train.lr_warmup_fraction == 1 / 16 and train.lr_schedule == "cosine" and train.adam_betas is None
    from vaekit.models.rae import RepresentationAutoencoder

    assert RepresentationAutoencoder.adam_betas == (0.9, 0.95)


def test_an_rae_run_ends_with_its_figures_report_and_per_channel_normalised_latents(trained_run, encoder_dir):
    """The explorer takes the saved AutoencoderRAE (encode/decode with the contract's labels argument, its fixed
    token grid); the frozen encoder's tokens are normalised per channel inside the model, as RAE's stage 2 wants,
    in model/ and best/ alike, and decoding undoes it (reconstructions are the unnormalised model's)."""
    from diffusers import AutoencoderRAE

    import vaekit
    from vaekit.data import build_dataset
    from vaekit.runs import read_run_config

    run = trained_run
    assert (run / "report.html").is_file()
    assert {"reconstructions.png", "interpolation_linear.png", "channels.png"} <= {p.name for p in (run / "figures").iterdir()}
    config = json.loads((run / "model" / "config.json").read_text())
    assert torch.tensor(config["latents_mean"]).shape == (64, 1, 1)
    assert json.loads((run / "best" / "config.json").read_text())["latents_std"] == config["latents_std"]
    data = build_dataset(read_run_config(run).data, "train")
    x = torch.stack([data[i][0] for i in range(len(data))]) * 2 - 1
    model = vaekit.load_model(run / "model")
    with torch.no_grad():
        z = model.encode(x).mean.double()
        reconstruction = model.decode(z.float())
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-4)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(64, dtype=torch.float64), rtol=0, atol=1e-4)
    raw = AutoencoderRAE.from_pretrained(run / "model", latents_mean=None, latents_std=None,
                                         ignore_mismatched_sizes=True, low_cpu_mem_usage=False).eval()
    assert raw._latents_std.shape == (1,) and float(raw._latents_std) == 1.0
    with torch.no_grad():
        unnormalised = raw.decode(raw.encode((x + 1) / 2).latent).sample * 2 - 1
    torch.testing.assert_close(reconstruction, unnormalised, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_the_diffusability_report_compares_a_trained_rae_with_a_kl_autoencoder_end_to_end(trained_run, tmp_path,
                                                                                        monkeypatch):
    """Issue 33's done-when: the tiny vaekit-trained RAE beside a tiny KL autoencoder under one budget, each
    denoiser as wide as its latents' channels (unet-wide): both rows with finite scores."""
    import math

    import numpy as np
    from huggingface_hub import constants
    from PIL import Image
    from skimage import data

    import vaekit
    from vaekit.diffusion.page import JSON_FILE

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)
    vaekit.save_model(vaekit.create_model("autoencoder-kl", block_out_channels=(16, 16), layers_per_block=1,
                                          norm_num_groups=8, latent_channels=4), tmp_path / "kl")
    rng, photo = np.random.default_rng(0), data.coffee()
    (tmp_path / "images").mkdir()
    for i in range(12):
        top, left = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
        Image.fromarray(photo[top:top + 64:2, left:left + 64:2]).save(tmp_path / "images" / f"{i}.png")
    out = tmp_path / "out"
    assert main(["diffusability", str(trained_run / "model"), str(tmp_path / "kl"), "--data", str(tmp_path / "images"),
                 "--resolution", "32", "--min-latent-side", "8", "--steps", "2", "--batch-size", "4", "--seeds", "0",
                 "--samples", "4", "--unet", "unet-wide", "--device", "cpu", "-o", str(out)]) == 0
    rows = {row["vae"]: row for row in json.loads((out / JSON_FILE).read_text())["rows"]}
    assert set(rows) == {"rae", "kl"}
    assert rows["rae"]["latent_shape"] == [64, 8, 8] and rows["kl"]["latent_shape"] == [4, 16, 16]
    for row in rows.values():  # unlabelled images offline: the cheap signals and the reconstruction are the scores
        scores = {key: row[key] for key in ("eps_mse", "psnr", "latent_hf_fraction", "reconstruction_mse")}
        assert all(value is not None and math.isfinite(value) for value in scores.values()), (row["vae"], scores)
    widths = {path.parent.name: json.loads((path / "config.json").read_text())["block_out_channels"]
              for path in (out / "runs").glob("*/model")}
    assert widths == {"rae-seed0": [64, 128], "kl-seed0": [32, 64]}  # unet-wide: as wide as a token


def test_export_latents_takes_an_rae_checkpoint_as_its_encode_gives_them(tmp_path, encoder_dir):
    """A checkpoint (vaekit's folder, ``_vaekit_model: rae``) exports the tokens ``encode`` gives, as they are: the
    model normalises them inside itself (identity ``latent_norm``), and the manifest records the encoder's width."""
    import numpy as np
    from PIL import Image

    import vaekit
    from vaekit.io.models import save_state
    from vaekit.latents import LatentDataset

    torch.manual_seed(0)
    model = vaekit.create_model("rae", encoder=str(encoder_dir), **{key.removeprefix("model."): value
                                                                   for key, value in TINY_DECODER.items()})
    checkpoint = save_state(model, tmp_path / "run" / "checkpoints" / "step-00000002")
    assert json.loads((checkpoint / "config.json").read_text())["_vaekit_model"] == "rae"
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    assert main(["export-latents", "--model", str(checkpoint), "--data", str(tmp_path / "images"), "--device", "cpu",
                 "-o", str(tmp_path / "latents")]) == 0
    exported = LatentDataset(tmp_path / "latents")
    manifest = exported.manifest
    assert (manifest["model"], manifest["latent_channels"], manifest["downsampling_factor"]) == ("rae", 64, 4)
    assert manifest["logvar"] is False and manifest["scaling_factor"] == 1.0 and manifest["latents_mean"] is None
    from vaekit.io.images import read_image

    x = torch.cat([read_image(tmp_path / "images" / f"{i}.png") for i in range(3)])
    with torch.no_grad():
        expected = vaekit.load_model(checkpoint).encode(x).mean
    torch.testing.assert_close(torch.stack([exported[i]["latent"] for i in range(3)]), expected, rtol=1e-5, atol=1e-5)


def test_an_rae_folder_is_written_whole_or_not_at_all(tmp_path, encoder_dir, monkeypatch):
    """diffusers' save_pretrained writes config.json, then the weights: saving the model (run/model) and writing
    the statistics into best/ go through a temporary sibling renamed into place, so a crash in the weights write
    leaves the previous folder as it was (not a new config beside the old weights) and nothing half-written."""
    import safetensors.torch

    import vaekit
    from vaekit.io.models import save_model

    torch.manual_seed(0)
    model = vaekit.create_model("rae", encoder=str(encoder_dir), **{key.removeprefix("model."): value
                                                                   for key, value in TINY_DECODER.items()})
    for name in ("model", "best"):
        save_model(model, tmp_path / name)
    (tmp_path / "best" / "best.json").write_text('{"step": 2}')
    before = {path.relative_to(tmp_path): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    model.store_channel_statistics(torch.linspace(-1, 1, 64), torch.linspace(0.5, 2, 64))  # a new config

    def killed(*args, **kwargs):
        raise RuntimeError("killed while writing the weights")

    monkeypatch.setattr(safetensors.torch, "save_file", killed)
    with pytest.raises(RuntimeError, match="killed"):
        save_model(model, tmp_path / "model")
    with pytest.raises(RuntimeError, match="killed"):
        model.copy_statistics_to(tmp_path / "best")
    after = {path.relative_to(tmp_path): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before  # no temporary folder left either

    monkeypatch.undo()
    save_model(model, tmp_path / "model")
    model.copy_statistics_to(tmp_path / "best")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best", "model"]
    assert (tmp_path / "best" / "best.json").read_text() == '{"step": 2}'  # its other files kept
    for name in ("model", "best"):
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert saved["latents_std"] != json.loads(before[Path(name) / "config.json"])["latents_std"]
        torch.testing.assert_close(vaekit.load_model(tmp_path / name).module._latents_std, model.module._latents_std)
