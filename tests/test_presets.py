"""Every preset in configs/ runs with README line 1's install alone: the dev extras are made absent (as
if never installed) in a fresh process, and each preset trains one step, evaluates and draws its report."""

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import sys
    import importlib.metadata as metadata
    blocked = sys.argv[1].split(",")
    for name in blocked:
        sys.modules[name] = None  # as if not installed: `import name` fails, find_spec(name) is None
    installed = metadata.distribution
    hidden = {name.lower().replace("_", "-") for name in blocked}

    def distribution(name):  # nor any metadata: libraries that probe for an optional package (torchmetrics
        if name.lower().replace("_", "-") in hidden:  # for transformers) must find it absent, as it would be
            raise metadata.PackageNotFoundError(name)
        return installed(name)

    metadata.distribution = distribution
    import dataclasses, traceback
    from pathlib import Path
    import torch
    import vaekit
    import yaml
    from vaekit.config import build_run_config, merge, parse_overrides, read_yaml
    from vaekit.sweep import read_sweep_config

    configs, out = Path(sys.argv[2]), Path(sys.argv[3])
    from vaekit.diffusion.images import write_photo_crops
    photos = out / "my-photos"
    write_photo_crops(photos, 96, 12)
    source = vaekit.save_model(vaekit.create_model("autoencoder-kl", block_out_channels=(32, 32), layers_per_block=1),
                               out / "source")
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(hidden_size=64, patch_size=4, image_size=518, num_attention_heads=1,
                                                       num_hidden_layers=1)).save_pretrained(out / "encoder")
    # an RAE preset gets this random encoder and a 1-layer decoder: 8×8 tokens of its 32² input, 8² patches → 64²
    tiny_rae = [f"model.encoder={out / 'encoder'}", "model.encoder_input_size=32", "model.patch_size=8",
                "model.decoder_hidden_size=32", "model.decoder_num_hidden_layers=1", "model.decoder_num_attention_heads=2",
                "model.decoder_intermediate_size=64", "loss.lpips_pretrained=false"]
    failed = []
    for preset in sorted(configs.glob("*.yaml")):
        raw = read_yaml(preset)
        if raw.get("data", {}).get("name") == "folder-crops" and not raw["data"].get("path"):
            raw["data"].update(path=str(photos), crop_size=64)  # a preset that must be told its data gets these
            preset = out / preset.name
            preset.write_text(yaml.safe_dump(raw))
        raw, grid = read_sweep_config(preset)
        first = grid[0] if isinstance(grid, list) else {key: values[0] for key, values in grid.items()}
        raw = merge(raw, parse_overrides([f"{k}={v}" for k, v in first.items()]))
        tiny = ["train.max_steps=1", "train.batch_size=2", "train.validation_examples=2", "train.calibration_images=2",
                "train.snapshot_examples=2", "train.progress_bar=false", "eval.iwae_samples=2", "eval.batch_size=16",
                "explore.map_examples=40", f"output_dir={out}", f"run_name={preset.stem}"]
        if raw.get("model", {}).get("init_from"):
            tiny.append(f"model.init_from={source}")
        if raw.get("train", {}).get("grad_accumulation", 1) > 1:
            tiny.append("train.grad_accumulation=1")
        if raw.get("loss", {}).get("name") == "lpips-gan" and raw["loss"].get("perceptual_weight", 1.0) > 0:
            tiny.append("loss.lpips_pretrained=false")  # its VGG weights cannot be downloaded here
        rae = raw.get("model", {}).get("name") == "rae"
        if rae:
            tiny += tiny_rae
        try:
            run = vaekit.train(build_run_config(merge(raw, parse_overrides(tiny))))
            # an RAE run saves diffusers' AutoencoderRAE folder, which the explorer does not take yet (docs/rae.md)
            assert (run / "report.html").is_file() or rae
            assert (run / "model" / ("diffusion_pytorch_model.safetensors" if rae else "model.safetensors")).is_file()
            print("OK", preset.name)
        except Exception:
            failed.append(preset.name)
            print("FAILED", preset.name, traceback.format_exc())
    for name in blocked:
        assert sys.modules[name] is None, f"{name} was imported after all"
    sys.exit(1 if failed else 0)
''')


def dev_only_modules() -> list[str]:
    """Import names of the packages the dev extras add to the core dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}

    dev_only = names(project["optional-dependencies"]["dev"]) - names(project["dependencies"])
    modules = {module for module, dists in importlib.metadata.packages_distributions().items()
               if any(d.lower() in dev_only for d in dists) and not module.startswith("_")}
    assert {"datasets", "tensorboard", "pytest"} <= modules  # the mapping found them
    return sorted(modules)


@pytest.mark.slow
def test_every_preset_runs_without_the_dev_extras(tmp_path):
    blocked = dev_only_modules()
    assert "skimage" not in blocked  # the built-in photos need it: it is a core dependency
    presets = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert {"finetune-decoder.yaml", "finetune-ft-mse.yaml", "finetune-eqvae.yaml", "kl-f8-tiny-photos.yaml"} <= set(presets)
    script = tmp_path / "presets.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), ",".join(blocked), str(ROOT / "configs"), str(tmp_path)],
                            capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith("OK ")) == presets


@pytest.mark.parametrize("preset", ["finetune-decoder.yaml", "finetune-ft-mse.yaml", "finetune-eqvae.yaml",
                                    "rae-dinov2-b.yaml"])
def test_the_fine_tune_presets_must_be_told_their_data(preset, capsys):
    from vaekit.cli import main

    assert main(["train", str(ROOT / "configs" / preset)]) == 1
    assert "data.path is required" in capsys.readouterr().err.strip().splitlines()[-1]
