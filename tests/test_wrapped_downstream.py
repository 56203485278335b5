"""The wrapped diffusers autoencoders downstream of eval: encode, decode, reconstruct, export-latents, the
decode Stage B's samples go through, calibrate and the diffusability report. The references are the
classes' own diffusers calls and their pipelines' normalisation written out (``test_autoencoders``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_autoencoders import TINY, _class_calls, _pipeline_latents, _tiny, photo_folder  # noqa: F401 (a fixture)

from vaekit.cli import main
from vaekit.io.images import read_image

FRAMES = ("AutoencoderKLQwenImage", "AutoencoderKLWan")
POINT = ("AutoencoderTiny", "AutoencoderDC", "AutoencoderRAE")


def _posterior(name, module, x):
    """The class's own posterior mean and log-variance (None for a deterministic encoder), by its calls."""
    if name in POINT:
        return _class_calls(name, module, x)[0], None
    if name in FRAMES:
        dist = module.encode(x.unsqueeze(2)).latent_dist
        return dist.mean[:, :, 0], dist.logvar[:, :, 0]
    dist = module.encode(x).latent_dist
    return dist.mean, dist.logvar


def _pipeline_logvar(name, module, logvar):
    """The log-variance of the pipeline's latents: the normalisation's gain squared, FLUX.2's patches folded."""
    config = module.config
    if name in FRAMES:
        return logvar - 2 * torch.log(torch.tensor(config.latents_std)).view(1, -1, 1, 1)
    if name == "AutoencoderKLFlux2":
        b, c, h, w = logvar.shape
        patched = logvar.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        return patched - torch.log(module.bn.running_var + config.batch_norm_eps).view(1, -1, 1, 1)
    return logvar + 2 * math.log(config.scaling_factor)


def _pipeline_unscale(name, module, latents):
    """What each pipeline hands ``vae.decode`` for its diffusion model's latents, written out as it does."""
    config = module.config
    if name in ("AutoencoderTiny", "AutoencoderRAE"):
        return latents
    if name in FRAMES:  # qwenimage/pipeline_qwenimage.py: latents / (1 / std) + mean, on the 5-D latent
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
        return (latents.unsqueeze(2) / inverse_std + mean)[:, :, 0]
    if name == "AutoencoderKLFlux2":  # flux2/pipeline_flux2.py: · bn std + bn mean, then unpatchify
        std = torch.sqrt(module.bn.running_var.view(1, -1, 1, 1) + config.batch_norm_eps)
        z = latents * std + module.bn.running_mean.view(1, -1, 1, 1)
        b, c4, h, w = z.shape
        return z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, h * 2, w * 2)
    return latents / config.scaling_factor


def _class_decode(name, module, z):
    if name in FRAMES:
        return module.decode(z.unsqueeze(2)).sample[:, :, 0]
    if name == "AutoencoderRAE":
        return module.decode(z).sample * 2 - 1
    if name == "ConsistencyDecoderVAE":
        return module.decode(z, generator=torch.Generator().manual_seed(0)).sample
    return module.decode(z).sample


def _check_export(name, module, folder, photo_folder, out):
    """export-latents → the pipeline's latents (and log-variances); the manifest's decode → the class's own."""
    from vaekit.diffusion.sampling import decode_latents, load_vae_for
    from vaekit.latents import LatentDataset

    assert main(["export-latents", "--model", str(folder), "--data", str(photo_folder), "--resolution", "32",
                 "--device", "cpu", "-o", str(out)]) == 0
    data = LatentDataset(out)
    items = [data[i] for i in range(len(data))]
    x = torch.cat([read_image(photo_folder / item["source"], resolution=32) for item in items])
    with torch.no_grad():
        mean, logvar = _posterior(name, module, x)
        expected = _pipeline_latents(name, module, mean)
        exported = torch.stack([item["latent"] for item in items])
        torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-5)
        assert data.manifest["model_class"] == name and data.manifest["logvar"] == (logvar is not None)
        assert data.manifest["latent_channels"] == expected.shape[1]
        if name != "AutoencoderRAE":  # RAE's grid is its encoder's input size over its patch, whatever the image's
            assert data.manifest["downsampling_factor"] == 32 // expected.shape[-1]
        if logvar is not None:
            torch.testing.assert_close(torch.stack([item["logvar"] for item in items]),
                                       _pipeline_logvar(name, module, logvar), rtol=1e-5, atol=1e-5)
        vae = load_vae_for(data.manifest)  # what `vaekit diffusion sample` decodes its samples with
        decoded = decode_latents(vae, exported, data.manifest)
        # the pipeline's own way back: its inverse normalisation of the exported latents, the class's decode
        own = _class_decode(name, module, _pipeline_unscale(name, module, exported)).clamp(-1, 1)
        torch.testing.assert_close(decoded, own, rtol=1e-5, atol=1e-5)
        # and the round trip loses only float32 rounding: the decode of the latent before it was normalised
        torch.testing.assert_close(decoded, _class_calls(name, module, x)[1].clamp(-1, 1), rtol=0, atol=1e-4)


def _check_encode_decode(name, module, folder, tmp_path, photo_folder, capsys):
    """vaekit encode, decode and reconstruct on two 32² images at their own size."""
    from vaekit.io.latents import load_latents

    paths = [str(photo_folder / "astronaut.png"), str(photo_folder / "more" / "chelsea.png")]
    small = tmp_path / "small"
    small.mkdir()
    for i, path in enumerate(paths):
        Image.open(path).convert("RGB").resize((32, 32), Image.BICUBIC).save(small / f"{i}.png")
    images = [str(small / "0.png"), str(small / "1.png")]
    assert main(["encode", *images, "--model", str(folder), "--device", "cpu", "-o", str(tmp_path / "z.safetensors")]) == 0
    stored = load_latents(tmp_path / "z.safetensors")
    x = torch.cat([read_image(path) for path in images])
    with torch.no_grad():
        expected = _pipeline_latents(name, module, _posterior(name, module, x)[0])
    torch.testing.assert_close(torch.stack(stored.latents), expected, rtol=1e-5, atol=1e-5)
    assert main(["decode", str(tmp_path / "z.safetensors"), "--model", str(folder), "--device", "cpu",
                 "-o", str(tmp_path / "decoded")]) == 0
    assert main(["reconstruct", *images, "--model", str(folder), "--device", "cpu", "-o", str(tmp_path / "rec")]) == 0
    for i in range(2):  # one image at a time, as the commands decode (the consistency decoder's noise is per call)
        with torch.no_grad():
            own = ((_class_calls(name, module, x[i:i + 1])[1][0].clamp(-1, 1) + 1) * 127.5).round()
        for written in (tmp_path / "decoded" / f"{i}.png", tmp_path / "rec" / f"{i}.png"):
            pixels = torch.from_numpy(np.asarray(Image.open(written), dtype=np.float32)).permute(2, 0, 1)
            assert (pixels - own).abs().max() <= 1, written  # the same image, to the 8-bit rounding
    assert "PSNR" in capsys.readouterr().out


def _by_hand_calibration_latents(name, module, photo_folder):
    """The normalised posterior samples `vaekit calibrate --data DIR --resolution 32` measures: the folder's
    images in its seeded order, one batch, the class's own posterior, noise from a generator seeded 0."""
    from vaekit.latents import open_source

    names = open_source(str(photo_folder)).names
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(0)).tolist()
    x = torch.cat([read_image(photo_folder / names[i], resolution=32) for i in order])
    with torch.no_grad():
        mean, logvar = _posterior(name, module, x)
        z = mean if logvar is None else mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn(
            mean.shape, generator=torch.Generator().manual_seed(0))
    return x, z, _pipeline_latents(name, module, z)


def _check_calibrate(name, module, folder, photo_folder, capsys):
    """calibrate's statistics are numpy's on the same latents; the config gets only the family's fields."""
    from vaekit.models.latent_scale import measure_normalised_latents
    import vaekit

    x, z, latents = _by_hand_calibration_latents(name, module, photo_folder)
    per_channel = latents.double().numpy().transpose(1, 0, 2, 3).reshape(latents.shape[1], -1)
    stats = measure_normalised_latents(vaekit.load_model(folder), [x], torch.Generator().manual_seed(0))
    np.testing.assert_allclose(stats.channel_mean.numpy(), per_channel.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.channel_std.numpy(), per_channel.std(1, ddof=1), rtol=1e-5)
    assert stats.std == pytest.approx(per_channel.std(ddof=1), rel=1e-5) and stats.images == 3
    before = json.loads((folder / "config.json").read_text())
    capsys.readouterr()
    assert main(["calibrate", "--model", str(folder), "--data", str(photo_folder), "--resolution", "32",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"std {per_channel.std(ddof=1):.4g}" in printed
    after = json.loads((folder / "config.json").read_text())
    changed = {key for key in after if after[key] != before[key]}
    if name in FRAMES:  # z's own per-channel statistics
        raw = z.double().numpy().transpose(1, 0, 2, 3).reshape(z.shape[1], -1)
        assert changed == {"latents_mean", "latents_std"}
        np.testing.assert_allclose(after["latents_mean"], raw.mean(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after["latents_std"], raw.std(1, ddof=1), rtol=1e-5)
    elif name == "AutoencoderRAE":  # its own encode applies them: mean 0, std 1 per channel on these images
        assert changed == {"latents_mean", "latents_std"}
        calibrated = vaekit.load_model(folder)
        with torch.no_grad():
            again = calibrated.encode(x).mean.double()
            torch.testing.assert_close(calibrated.decode(again.float()), module.decode(latents).sample * 2 - 1,
                                       rtol=0, atol=1e-4)  # decoding undoes them: the autoencoder is unchanged
        np.testing.assert_allclose(again.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-4)
        np.testing.assert_allclose(again.std(dim=(0, 2, 3)).numpy(), 1, rtol=1e-4)
    elif name in ("AutoencoderKLFlux2", "AutoencoderTiny"):
        assert not changed and "nothing written: " in printed
    else:  # SCALED: 1 / std of the raw samples
        assert changed == {"scaling_factor"}
        assert after["scaling_factor"] == pytest.approx(1 / z.double().std().item(), rel=1e-5)
    return printed


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_wrapped_class_exports_the_latents_its_pipeline_hands_its_diffusion_model(name, tmp_path, photo_folder,
                                                                                         capsys):
    folder = tmp_path / name
    module = _tiny(name, folder)
    _check_export(name, module, folder, photo_folder, tmp_path / "latents")
    _check_encode_decode(name, module, folder, tmp_path, photo_folder, capsys)
    _check_calibrate(name, module, folder, photo_folder, capsys)


def test_calibrate_keeps_a_family_convention_and_edits_only_a_copy_when_asked(tmp_path, photo_folder, capsys):
    folder = tmp_path / "qwen"
    _tiny("AutoencoderKLQwenImage", folder)
    before = (folder / "config.json").read_text()
    assert main(["calibrate", "--model", str(folder), "--data", str(photo_folder), "--resolution", "32",
                 "--per-channel"]) == 1
    assert "keeps its family's" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(folder), "--data", str(photo_folder), "--resolution", "32",
                 "--device", "cpu", "-o", str(tmp_path / "copy")]) == 0
    assert (folder / "config.json").read_text() == before  # the original untouched
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["latents_std"] != json.loads(before)["latents_std"]
    assert main(["encode", str(photo_folder / "astronaut.png"), "--model", str(folder), "--tile", "64",
                 "-o", str(tmp_path / "z.safetensors")]) == 1
    assert "leave --tile out" in capsys.readouterr().err


@pytest.mark.slow
def test_the_diffusability_report_takes_a_wrapped_class_in_its_family_normalisation(tmp_path, capsys, monkeypatch):
    """FLUX.2 beside a vaekit KL: its denoiser sees its pipeline's 2 × 2-patched latents (f = 4 here), exported
    from the folder as it is (no unit-scaled copy); the KL one is normalised by the report's convention."""
    from huggingface_hub import constants

    import vaekit
    from vaekit.diffusion.page import JSON_FILE
    from vaekit.latents import LatentDataset

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)
    vaekit.save_model(vaekit.create_model("autoencoder-kl", block_out_channels=(16, 16), layers_per_block=1,
                                          norm_num_groups=8, latent_channels=4), tmp_path / "kl")
    _tiny("AutoencoderKLFlux2", tmp_path / "flux2")
    from skimage import data

    rng, photo = np.random.default_rng(0), data.coffee()
    (tmp_path / "images").mkdir()
    for i in range(12):
        top, left = rng.integers(0, photo.shape[0] - 32), rng.integers(0, photo.shape[1] - 32)
        Image.fromarray(photo[top:top + 32:2, left:left + 32:2]).save(tmp_path / "images" / f"{i}.png")
    out = tmp_path / "out"
    assert main(["diffusability", str(tmp_path / "kl"), str(tmp_path / "flux2"), "--data", str(tmp_path / "images"),
                 "--resolution", "16", "--min-latent-side", "4", "--steps", "2", "--batch-size", "4", "--seeds", "0",
                 "--samples", "4", "--device", "cpu", "-o", str(out)]) == 0
    rows = {row["vae"]: row for row in json.loads((out / JSON_FILE).read_text())["rows"]}
    assert rows["flux2"]["latent_shape"] == [16, 4, 4] and rows["kl"]["latent_shape"] == [4, 8, 8]
    manifest = LatentDataset(out / "latents" / "flux2").manifest
    assert manifest["patch_size"] == 2 and manifest["model_source"] == str((tmp_path / "flux2").resolve())
    assert not (out / "vaes" / "flux2").exists() and (out / "vaes" / "kl" / "config.json").is_file()
    capsys.readouterr()
    assert main(["diffusability", str(tmp_path / "flux2"), "--data", str(tmp_path / "images"), "--resolution", "8",
                 "-o", str(tmp_path / "small")]) == 1
    error = capsys.readouterr().err  # 8 pixels at f = 4: 2 × 2 latents, fewer than the default 16 a side
    assert "gives" in error and "2 × 2 latents (f = 4)" in error


def test_a_folder_of_one_variant_loads_it_and_explore_and_serve_name_what_takes_a_model(tmp_path, photo_folder,
                                                                                       capsys):
    import vaekit

    module = _tiny("AutoencoderTiny", tmp_path / "plain")
    module.save_pretrained(tmp_path / "fp16", variant="fp16")  # as hub repositories ship it
    assert [p.name for p in (tmp_path / "fp16").glob("*.safetensors")] == ["diffusion_pytorch_model.fp16.safetensors"]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(vaekit.load_model(tmp_path / "fp16").encode(x).mode(), module.encode(x).latents)
    module.save_pretrained(tmp_path / "fp16", variant="bf16")
    assert main(["encode", str(photo_folder / "astronaut.png"), "--model", str(tmp_path / "fp16"),
                 "-o", str(tmp_path / "z.safetensors")]) == 1
    assert "several variants (bf16, fp16)" in capsys.readouterr().err
    for command in ("explore", "serve"):
        assert main([command, str(tmp_path / "plain")]) == 1
        error = capsys.readouterr().err.strip()
        assert "is a model folder, not a run directory" in error and "vaekit eval --model" in error
        assert len(error.splitlines()) == 1


def test_calibrate_in_place_warns_that_the_familys_pretrained_diffusion_model_no_longer_fits(tmp_path, photo_folder,
                                                                                            caplog):
    """A local wrapped folder (Qwen-Image's latents_mean/std here) is still edited in place by default, as vaekit
    edits its own model folders, but the warning names each field with its old and new values and says that the
    family's pretrained diffusion model was trained with the old ones; -o and a vaekit run's own folder do not warn."""
    folder = tmp_path / "qwen"
    _tiny("AutoencoderKLQwenImage", folder)
    before = json.loads((folder / "config.json").read_text())
    common = ["calibrate", "--data", str(photo_folder), "--resolution", "32", "--device", "cpu"]
    with caplog.at_level("WARNING", logger="vaekit"):
        assert main([*common, "--model", str(folder), "-o", str(tmp_path / "copy")]) == 0
    assert "edited in place" not in caplog.text
    with caplog.at_level("WARNING", logger="vaekit"):
        assert main([*common, "--model", str(folder)]) == 0
    after = json.loads((folder / "config.json").read_text())
    assert after["latents_std"] != before["latents_std"]
    warning = caplog.text
    assert f"{folder} was edited in place" in warning and "AutoencoderKLQwenImage family's diffusion model" in warning
    assert f"latents_mean was {[float(f'{v:.5g}') for v in before['latents_mean']]}" in warning
    assert f"latents_std was {[float(f'{v:.5g}') for v in before['latents_std']]}, now" in warning
    assert "trained on latents normalised by the old values" in warning and "-o OUT" in warning
