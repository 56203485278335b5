from __future__ import annotations

import pytest
import torch


def tiny_overrides(tmp_path, **extra) -> list[str]:
    """Overrides for a run that trains in about a second on 2 CPU cores; ``key=None`` drops a key."""
    values = {
        "output_dir": str(tmp_path / "runs"),
        "data.num_train": 256,
        "data.num_test": 64,
        "model.hidden_dims": "[32]",
        "model.latent_dim": 3,
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.lr": 3e-3,
        "train.log_every": 4,
        "train.checkpoint_every": 5,
        "train.progress_bar": "false",
        "eval.iwae_samples": 8,
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items() if value is not None]


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest error relative to the output's scale (the reference's standard deviation), in float64."""
    return ((out.double() - reference.double()).abs().max() / reference.double().std()).item()


def assert_same_network_output(actual: torch.Tensor, expected: torch.Tensor, scale: float = 1e-4) -> None:
    """Two float32 evaluations of one network that may differ only in summation order (oneDNN and MKL pick
    kernels, and so the order, by CPU, thread count and memory alignment): within ``scale`` times the
    output's standard deviation, everywhere. 1e-4 is about 1,700 float32 unit roundoffs (2⁻²⁴), ten times
    the largest float32-vs-float64 error measured on the tiny diffusers autoencoders of
    test_autoencoders.py (9.9e-6 of the scale); a wrong call, scaling or crop moves outputs by O(1) of it.
    An element-wise rtol/atol of 1e-5 is not such a bound: it held on one CPU and failed on another."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = relative_error(actual, expected)
    assert error <= scale, f"largest difference {error:.3g} of the output's scale, more than {scale:g}"


@pytest.fixture(scope="session", autouse=True)
def judge_cache(tmp_path_factory):
    """Trained judges (the diffusability report's classifier of the built-in objects, once per size) are kept
    for the session in a folder of its own, never in the user's cache."""
    import os

    folder = tmp_path_factory.mktemp("vaekit-cache")
    previous = os.environ.get("VAEKIT_CACHE")
    os.environ["VAEKIT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("VAEKIT_CACHE", None)
    else:
        os.environ["VAEKIT_CACHE"] = previous


@pytest.fixture
def tiny(tmp_path):
    def make(**extra):
        from vaekit.config import load_config

        return load_config(None, tiny_overrides(tmp_path, **extra))

    return make


@pytest.fixture(scope="session")
def trained_small():
    """A small f=2 autoencoder after 150 steps on crops of a photograph (5 s): random weights amplify
    every difference and say little about tiling or the accuracy of the fast paths on real filters; a
    model that has learnt a little does. Returns (model, photograph (1, 3, 128, 128) in [-1, 1])."""
    import torch
    from skimage import data as photos

    import vaekit

    torch.manual_seed(0)
    model = vaekit.create_model("autoencoder-kl", block_out_channels=(32, 64), layers_per_block=1,
                                norm_num_groups=8, latent_channels=3)
    photo = torch.tensor(photos.astronaut()[::4, ::4].copy()).permute(2, 0, 1).float() / 127.5 - 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.5, 0.9))
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        i, j = torch.randint(0, 96, (2,), generator=generator).tolist()
        x = torch.stack([photo[:, i:i + 32, j:j + 32], photo.flip(2)[:, j:j + 32, i:i + 32]])
        loss = (model(x).reconstruction - x).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), photo[None]


@pytest.fixture(scope="session")
def weights_server(tmp_path_factory):
    """A loopback HTTP server holding a seeded random VGG16 state dict under LPIPS's file name and a stand-in
    Inception file: where the download path is exercised without the internet. Yields (base URL, the VGG
    state dict); the files are written once per session (the VGG file is 528 MB)."""
    import functools
    import http.server
    import threading

    import torch
    import torchvision

    from vaekit.losses.perceptual import VGG_FILE
    from vaekit.metrics.image import INCEPTION_FILE

    served = tmp_path_factory.mktemp("served-weights")
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16().state_dict()
    torch.save(vgg, served / VGG_FILE)
    (served / INCEPTION_FILE).write_bytes(b"inception weights stand-in")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", vgg
    finally:
        server.shutdown()
