"""Starting from pretrained weights (model.init_from): every source format, the architecture taken from the
source, conflicts and misfits as one-line errors, decoder-only fine-tuning, hub names through the cache."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vaekit
from vaekit.config import load_config
from vaekit.errors import ConfigError, VaekitError
from vaekit.io.convert import export_diffusers
from vaekit.io.models import locate
from vaekit.runs import read_metrics

from test_autoencoder_kl import _to_ldm_names

# GroupNorm's group count is not stored in LDM files (LDM's 32 is assumed), so the source uses it.
SOURCE = dict(block_out_channels=(32, 32), layers_per_block=1, latent_channels=3, scaling_factor=0.37)


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(1)
    return vaekit.create_model("autoencoder-kl", **SOURCE).eval()


def overrides(tmp_path, init_from, **extra):
    values = {"model.init_from": str(init_from), "data.name": "photos", "data.crop_size": 32, "data.num_train": 8,
              "loss.perceptual_weight": 0, "loss.disc_weight": 0, "train.epochs": 1, "train.batch_size": 4,
              "train.progress_bar": "false", "train.snapshot_examples": 0, "train.validation_examples": 4,
              "output_dir": str(tmp_path / "runs"), **extra}
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


def read_metrics_log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def fine_tune(tmp_path, init_from, **extra):
    return vaekit.train(overrides(tmp_path, init_from, **extra), evaluate_at_end=False, explore=False)


def write_source(model, fmt, folder):
    """The model saved the way each kind of source is found in the wild."""
    if fmt == "diffusers folder (written by diffusers)":
        from diffusers import AutoencoderKL

        twin = AutoencoderKL(block_out_channels=SOURCE["block_out_channels"], layers_per_block=1, latent_channels=3,
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             scaling_factor=0.37)
        twin.load_state_dict(model.state_dict())
        twin.save_pretrained(folder)
        return folder
    if fmt == "vaekit folder":
        return vaekit.save_model(model, folder)
    ldm = {f"first_stage_model.{k}": v for k, v in _to_ldm_names(model.state_dict(), 2).items()}
    folder.mkdir(parents=True)
    if fmt == "LDM .ckpt":
        torch.save({"state_dict": {**ldm, "model.diffusion_model.out.weight": torch.zeros(1)}}, folder / "sd.ckpt")
        return folder / "sd.ckpt"
    save_file({k: v.contiguous() for k, v in ldm.items()}, folder / "vae.safetensors")
    return folder / "vae.safetensors"


FORMATS = ["diffusers folder (written by diffusers)", "vaekit folder", "LDM .ckpt", "LDM .safetensors"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_source_format_starts_the_run_from_its_weights(fmt, source_model, tmp_path):
    source = write_source(source_model, fmt, tmp_path / "source")
    # lr 0: the weights stay the source's, so what was loaded can be compared exactly.
    run = fine_tune(tmp_path, source, **{"train.lr": 0.0, "train.calibrate_latents": "never"})
    trained = vaekit.load_model(run)
    assert trained.config.block_out_channels == (32, 32) and trained.config.latent_channels == 3
    for key, value in source_model.state_dict().items():
        assert torch.equal(trained.state_dict()[key], value), key
    # LDM files do not record the scaling factor (SD's 0.18215 is assumed); the others keep theirs.
    assert trained.config.scaling_factor == (0.18215 if fmt.startswith("LDM") else 0.37)
    config = (run / "config.yaml").read_text()
    assert f"init_from: {source}" in config and "block_out_channels:\n  - 32\n  - 32" in config


def test_a_run_directory_is_a_source_too(source_model, tmp_path):
    first = fine_tune(tmp_path, write_source(source_model, "vaekit folder", tmp_path / "source"),
                      **{"run_name": "first", "train.calibrate_latents": "never"})
    second = fine_tune(tmp_path, first, **{"run_name": "second", "train.lr": 0.0, "train.calibrate_latents": "never"})
    a, b = vaekit.load_model(first).state_dict(), vaekit.load_model(second).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_conflicting_model_setting_is_one_line_naming_both_values(source_model, tmp_path):
    source = write_source(source_model, "vaekit folder", tmp_path / "source")
    with pytest.raises(ConfigError, match=r"model.latent_channels=8 conflicts with model.init_from .*source, which "
                                          r"has latent_channels=3"):
        fine_tune(tmp_path, source, **{"model.latent_channels": 8})
    with pytest.raises(ConfigError, match=r"model.name=kl-f8-tiny has block_out_channels=\[32, 64, 64, 64\], but "
                                          r"model.init_from .* has block_out_channels=\[32, 32\]"):
        fine_tune(tmp_path, source, **{"model.name": "kl-f8-tiny"})
    with pytest.raises(ConfigError, match="model.name=mlp-vae conflicts .* holds a autoencoder-kl"):
        vaekit.train(load_config(None, [f"model.init_from={source}", "model.name=mlp-vae", "data.name=digits",
                                        f"output_dir={tmp_path}"]))
    # What is not architecture may be set; a spelled-out value equal to the source's is fine.
    run = fine_tune(tmp_path, source, **{"model.gradient_checkpointing": "true", "model.latent_channels": 3,
                                         "train.calibrate_latents": "never"})
    assert vaekit.load_model(run).config.gradient_checkpointing


def test_tensors_that_do_not_fit_are_listed(source_model, tmp_path):
    folder = write_source(source_model, "vaekit folder", tmp_path / "source")
    state = {k: v.contiguous() for k, v in source_model.state_dict().items()}
    del state["decoder.conv_out.bias"], state["encoder.conv_in.weight"]
    state["decoder.extra.weight"] = torch.zeros(2)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(VaekitError, match=r"tensors 2 missing: decoder.conv_out.bias, encoder.conv_in.weight; "
                                          r"1 unexpected: decoder.extra.weight"):
        fine_tune(tmp_path, folder)
    with pytest.raises(VaekitError, match="model.init_from .*nowhere: no such file or folder"):
        fine_tune(tmp_path, tmp_path / "nowhere")


def test_decoder_only_needs_a_pretrained_encoder(tmp_path):
    with pytest.raises(ConfigError, match="train.decoder_only=true .* set model.init_from"):
        vaekit.train(load_config(None, ["model.name=kl-f8-tiny", "data.name=photos", "train.decoder_only=true",
                                        f"output_dir={tmp_path}"]))


def test_decoder_only_fine_tuning_keeps_the_encoder_bitwise(source_model, tmp_path):
    source = write_source(source_model, "diffusers folder (written by diffusers)", tmp_path / "source")
    run = fine_tune(tmp_path, source, **{"train.decoder_only": "true", "train.ema_decay": 0.9, "train.lr": 1e-3,
                                         "loss.disc_weight": 0.5, "loss.disc_start": 0, "train.epochs": 2})
    for trained in (vaekit.load_model(run), vaekit.load_model(run / "best")):
        changed = {k for k, v in source_model.state_dict().items() if not torch.equal(trained.state_dict()[k], v)}
        assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed), changed
        x = torch.rand(2, 3, 32, 32) * 2 - 1
        with torch.no_grad():
            mine, theirs = trained.encode(x), source_model.encode(x)
        assert torch.equal(mine.mean, theirs.mean) and torch.equal(mine.logvar, theirs.logvar)
        # The latents are the source's, so the source's scaling factor is kept (not re-measured).
        assert trained.config.scaling_factor == 0.37
    assert read_metrics(run)["train"]["scaling_factor"] == 0.37


def _fake_hub_cache(root, repo, model, subfolder=""):
    """The Hugging Face cache's layout for one snapshot of ``repo`` holding ``model`` (diffusers format)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = root / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    export_diffusers(model, entry / "snapshots" / commit / subfolder)
    return entry / "snapshots" / commit / subfolder


def test_a_hub_name_is_found_in_the_cache_and_offline_says_how_to_get_it(source_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cached = _fake_hub_cache(tmp_path / "hub", "someone/their-vae", source_model)
    assert locate("someone/their-vae") == cached
    in_pipeline = _fake_hub_cache(tmp_path / "hub", "someone/pipeline", source_model, subfolder="vae")
    assert locate("someone/pipeline/vae") == in_pipeline
    run = fine_tune(tmp_path, "someone/their-vae", **{"train.lr": 0.0, "train.calibrate_latents": "never"})
    assert json.loads((run / "model" / "config.json").read_text())["scaling_factor"] == 0.37
    with pytest.raises(VaekitError, match=r"stabilityai/sd-vae-ft-ema: not in the Hugging Face cache \(.*hub\) .*"
                                          r"`huggingface-cli download stabilityai/sd-vae-ft-ema config.json"):
        locate("stabilityai/sd-vae-ft-ema")


def test_every_command_that_takes_a_model_takes_a_hub_name_and_calibrate_copies_out_of_the_cache(
        source_model, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants
    from PIL import Image

    from vaekit.cli import main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cached = _fake_hub_cache(tmp_path / "hub", "someone/pipeline", source_model, subfolder="vae")
    before = (cached / "config.json").read_text()
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png")
    image = str(tmp_path / "imgs" / "0.png")
    hub = "someone/pipeline/vae"
    assert main(["reconstruct", image, "--model", hub, "-o", str(tmp_path / "rec")]) == 0
    assert main(["encode", image, "--model", hub, "-o", str(tmp_path / "z.safetensors")]) == 0
    assert main(["decode", str(tmp_path / "z.safetensors"), "--model", hub, "-o", str(tmp_path / "dec")]) == 0
    assert main(["export-latents", "--model", hub, "--data", str(tmp_path / "imgs"), "-o", str(tmp_path / "lat")]) == 0
    assert main(["convert", hub, "-o", str(tmp_path / "converted")]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--model", hub, "--data", str(tmp_path / "imgs"), "--resolution", "16"]) == 0
    assert (cached / "config.json").read_text() == before  # the cache is the hub's: untouched
    copy = vaekit.load_model(tmp_path / "vae-calibrated")
    assert copy.config.scaling_factor != json.loads(before)["scaling_factor"]


@pytest.mark.slow
def test_the_practitioners_chain_fine_tune_convert_and_decode_in_diffusers(source_model, weights_server, tmp_path,
                                                                          monkeypatch):
    """docs/training_image_autoencoders.md's end-to-end section on a tiny model: a diffusers folder is
    fine-tuned decoder-only with MSE + 0.1 · LPIPS — LPIPS's VGG downloaded on first use, here from the
    loopback address — and validation, converted back to diffusers, loaded by
    diffusers.AutoencoderKL.from_pretrained, and decodes latents as vaekit does, with vaekit's factor."""
    from diffusers import AutoencoderKL

    from vaekit.cli import main
    from vaekit.losses import perceptual
    from vaekit.models.fastconv import fast_paths

    base, _ = weights_server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(perceptual, "VGG_URL", f"{base}/{perceptual.VGG_FILE}")
    source = write_source(source_model, "diffusers folder (written by diffusers)", tmp_path / "sd-vae")
    run = fine_tune(tmp_path, source, **{"train.decoder_only": "true", "train.validate_every": 1,
                                         "loss.pixel": "l2", "loss.perceptual_weight": 0.1})
    assert (tmp_path / "cache" / "hub" / "checkpoints" / perceptual.VGG_FILE).is_file()  # downloaded
    assert any("lpips" in record for record in read_metrics_log(run))
    assert (run / "best" / "best.json").is_file()
    assert main(["convert", str(run), "-o", str(tmp_path / "my-vae"), "--format", "diffusers"]) == 0
    theirs = AutoencoderKL.from_pretrained(tmp_path / "my-vae").eval()
    ours = vaekit.load_model(run)
    assert theirs.config.scaling_factor == ours.config.scaling_factor == 0.37  # the encoder's: kept
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), fast_paths(False):
        # what a pipeline does with its denoised latents: vae.decode(latents / scaling_factor)
        torch.testing.assert_close(theirs.decode(latents / theirs.config.scaling_factor).sample,
                                   ours.from_latents(latents), atol=1e-5, rtol=1e-5)


def test_a_hub_repository_with_only_a_variants_weights_is_fetched_and_loads(source_model, tmp_path, monkeypatch):
    """Many pipelines ship only diffusion_pytorch_model.fp16.safetensors: the plain file is asked for first,
    then the variant's, which loads in float32 like the plain weights."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cached = _fake_hub_cache(tmp_path / "hub", "someone/fp16-only", source_model, subfolder="vae")
    plain = cached / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({k: v.half() for k, v in load_file(plain).items()}, cached / "diffusion_pytorch_model.fp16.safetensors")
    plain.unlink()
    found = locate("someone/fp16-only/vae")
    assert found == cached and (found / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = vaekit.load_model("someone/fp16-only/vae")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():  # the fp16 copy of the same weights: equal up to half precision's rounding
        mean = loaded.encode(x).mean
        assert mean.dtype == torch.float32 and torch.allclose(mean, source_model.encode(x).mean, atol=5e-2)
