"""Autoencoders vaekit did not train, scored on a user's own folder: ``vaekit eval --model M --data FOLDER``;
and a run's evaluation scoring both its final weights and best/."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

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
