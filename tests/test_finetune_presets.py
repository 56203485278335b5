"""The fine-tune presets as a practitioner runs them on their own folder: a budget in epochs whose step count
follows the folder's size, a warm-up, bf16 and loader workers on CUDA (float32 and no workers on the CPU), a
validation batch that fits a 24 GiB card, the exact ft-MSE reproduction kept apart, and a warning in the log
and the report when the encoder — hence the latent space a diffusion model was trained on — changed.

The presets' sources are downloaded in real use; here a small diffusers ``AutoencoderKL`` written with
``save_pretrained`` stands in for them (``model.init_from``)."""

import logging
import math
import os

import pytest
import torch
import yaml

import vaekit
from vaekit.config import load_config
from vaekit.errors import ConfigError
from vaekit.runs import read_metrics
from vaekit.training.memory import GIB
from vaekit.training.plan import resolve_mixed_precision, resolve_num_workers

from test_presets import ROOT

CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def diffusers_source(tmp_path_factory):
    """A small diffusers AutoencoderKL folder, as `save_pretrained` writes SD's VAE."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("source") / "vae"
    AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  scaling_factor=0.37).save_pretrained(folder)
    return folder


def write_jpegs(folder, count, size=(48, 40)):
    """``count`` small JPEGs (their content does not matter to a plan)."""
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", size, (i % 256, 40, 90)).save(folder / f"{i:04d}.jpg")
    return folder


def test_decoder_preset_on_cuda_plans_steps_from_the_folder_bf16_workers_and_validation(diffusers_source, tmp_path,
                                                                                        capsys):
    from vaekit.cli import main

    photos = write_jpegs(tmp_path / "photos", 50)
    code = main(["train", str(CONFIGS / "finetune-decoder.yaml"), f"data.path={photos}",
                 f"model.init_from={diffusers_source}", f"output_dir={tmp_path / 'runs'}", "--device", "cuda",
                 "--print-config"])
    out = capsys.readouterr().out
    assert code == 0 and not (tmp_path / "runs").exists()  # nothing trained
    printed = yaml.safe_load(out)
    # By hand: 50 files, a tenth (5) held out, 45 train; 8 a step: 6 steps an epoch (the last of 5); 10 epochs.
    assert "epochs: 10  # 60 optimizer steps: 6 an epoch of 45 training examples, 8 × 1 a step" in out
    assert "lr_warmup_fraction: 0.05  # 3 warm-up steps" in out  # 5 % of 60
    cuda_bf16 = not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
    assert printed["train"]["mixed_precision"] == ("bf16" if cuda_bf16 else "no")
    assert printed["train"]["num_workers"] == max(0, min(4, os.cpu_count() - 1))  # 4, fewer on a small machine
    assert printed["model"]["init_from"] == str(diffusers_source) and printed["model"]["latent_channels"] == 4
    assert printed["data"]["short_side"] == 256 and printed["data"]["crop_size"] == 256
    line = next(line for line in out.splitlines() if line.strip().startswith("validation_batch_size:"))
    assert "null  # automatic; by the memory estimates 5 " in line  # every held-out image: a small model
    assert ("24 GiB card, stated" in line) != torch.cuda.is_available()


def test_on_the_cpu_the_automatic_settings_are_float32_and_no_workers(tmp_path):
    assert resolve_mixed_precision("auto", cuda=False) == "no" and resolve_num_workers("auto", cuda=False) == 0
    assert resolve_mixed_precision("fp16", cuda=False) == "fp16" and resolve_num_workers(3, cuda=True) == 3
    photos = write_jpegs(tmp_path / "photos", 20)
    from vaekit.training.setup import build_run

    run = build_run(load_config(CONFIGS / "finetune-decoder.yaml", [
        f"data.path={photos}", "model.init_from=null", "model.name=kl-f8-tiny", "train.decoder_only=false",
        "data.crop_size=32", "data.short_side=32", "loss.lpips_pretrained=false", "train.snapshot_examples=0",
        "train.validation_examples=2", f"output_dir={tmp_path / 'runs'}"]), device="cpu")
    assert run.cfg.mixed_precision == "no" and run.cfg.num_workers == 0
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())["train"]
    assert saved["mixed_precision"] == "no" and saved["num_workers"] == 0  # the run records what it ran with
    # 18 training files, 8 a step: 3 steps an epoch, 30 steps; the warm-up is 5 % of them, rounded: 2.
    assert run.total_steps == 30 and run.warmup_steps == 2
    run.batches.close()


def test_the_warm_up_fraction_sets_the_learning_rate_of_the_first_steps(tiny):
    from vaekit.training.setup import build_run
    from vaekit.training.steps import set_learning_rates

    run = build_run(tiny(**{"train.lr_warmup_fraction": 0.1, "train.lr_schedule": "cosine", "train.lr": 1e-2}),
                    device="cpu")
    assert run.total_steps == 24 and run.warmup_steps == 2  # 256 examples / 32 = 8 steps an epoch, 3 epochs
    lrs = []
    for step in (0, 1, 2, 13):
        run.state.step = step
        set_learning_rates(run)
        lrs.append(run.optimizers["model"].param_groups[0]["lr"])
    # Linear warm-up over 2 steps, then cosine from the peak to 0 over the other 22.
    expected = [5e-3, 1e-2, 1e-2, 1e-2 * 0.5 * (1 + math.cos(math.pi * 11 / 22))]
    assert lrs == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ConfigError, match="not both"):
        tiny(**{"train.lr_warmup_fraction": 0.1, "train.lr_warmup_steps": 5})


def test_the_ft_mse_reproduction_is_its_own_preset_as_the_model_card_gives_it():
    config = load_config(CONFIGS / "finetune-ft-mse.yaml", ["data.path=x"])
    cfg = config.train
    # sd-vae-ft-mse's card: resumed from ft-EMA, 280k steps, batch 192, MSE + 0.1 × LPIPS, EMA weights.
    assert config.model.init_from == "stabilityai/sd-vae-ft-ema" and cfg.max_steps == 280_000
    assert cfg.batch_size * cfg.grad_accumulation == 192 and cfg.lr == pytest.approx(4.5e-6 * 192)
    assert config.loss.params.pixel == "l2" and config.loss.params.perceptual_weight == 0.1
    assert cfg.mixed_precision == "no" and cfg.lr_schedule == "constant" and cfg.ema_decay == 0.9999
    mine = load_config(CONFIGS / "finetune-decoder.yaml", ["data.path=x"])
    assert mine.model.init_from == "stabilityai/sd-vae-ft-mse" and mine.train.max_steps is None
    assert 1e-5 <= mine.train.lr <= 1e-4 and mine.train.lr_schedule == "cosine"


def test_the_memory_plan_of_sd_vae_at_256_fits_a_24_gib_card(tmp_path):
    from vaekit.training.plan import uses_cuda
    from vaekit.training.preview import plan_memory

    config = load_config(CONFIGS / "finetune-decoder.yaml", ["data.path=x", "model.init_from=null",
                                                             "model.name=kl-f8"])
    memory = plan_memory(config, None, (3, 256, 256), 256, "cuda", uses_cuda("cuda"))
    card = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 24 * GIB
    # What the card must hold at the first validation: the training state, then a batch of encode + decode.
    assert memory.training_state + memory.validation_batch * memory.validation_per_image <= card
    assert 64 <= memory.validation_batch < 256 or torch.cuda.is_available()
    # eval.batch_size's 256 images at once, what validation sent before, would not fit.
    assert memory.training_state + 256 * memory.validation_per_image > 24 * GIB


def eqvae_run(tmp_path, preset, source, photos, caplog, explore=True, **extra):
    values = {"data.path": photos, "model.init_from": source, "data.crop_size": 32, "data.short_side": 32,
              "loss.lpips_pretrained": "false", "train.max_steps": 2, "train.batch_size": 2,
              "train.grad_accumulation": 1, "train.validation_examples": 2, "train.calibration_images": 2,
              "train.snapshot_examples": 0, "train.progress_bar": "false", "explore.num_examples": 2,
              "output_dir": tmp_path / "runs", "run_name": preset.split(".")[0], **extra}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        run = vaekit.train(load_config(CONFIGS / preset, [f"{k}={v}" for k, v in values.items()]),
                           evaluate_at_end=False, explore=explore)
    logged = [record.getMessage() for record in caplog.records if "latent space" in record.getMessage()]
    return run, logged


@pytest.mark.slow
def test_the_eqvae_preset_warns_that_the_latents_changed_and_the_decoder_preset_does_not(diffusers_source, tmp_path,
                                                                                         caplog):
    from vaekit.diffusion.images import write_photo_crops

    photos = tmp_path / "photos"
    write_photo_crops(photos, 48, 12)
    run, logged = eqvae_run(tmp_path, "finetune-eqvae.yaml", diffusers_source, photos, caplog)
    metrics = read_metrics(run)["train"]
    assert len(logged) == 1 and metrics["warnings"] == logged
    assert f"the encoder of {diffusers_source} was trained" in logged[0] and "will not fit" in logged[0]
    assert f"(the source's was {0.37:.5g})" in logged[0]
    assert "will not fit this model&#39;s" in (run / "report.html").read_text()  # HTML-escaped, in the notes

    run, logged = eqvae_run(tmp_path, "finetune-decoder.yaml", diffusers_source, photos, caplog,
                            **{"train.mixed_precision": "no"})
    assert logged == [] and "warnings" not in read_metrics(run)["train"]
    assert "will not fit" not in (run / "report.html").read_text()
    # A run of no steps (the starting weights, validated and saved: what a fine-tune is compared with)
    # changed nothing, so it warns of nothing either.
    run, logged = eqvae_run(tmp_path, "finetune-eqvae.yaml", diffusers_source, photos, caplog, explore=False,
                            **{"train.epochs": 0, "run_name": "as-it-was"})
    assert logged == [] and read_metrics(run)["train"]["steps"] == 0
