"""The small models, parametrised over every registered MLP model and preset (timm's idea);
tests/test_autoencoder_kl.py does the same for the convolutional autoencoders."""

import json

import pytest
import torch

import vaekit
from vaekit.errors import ConfigError, VaekitError
from vaekit.models.mlp import MLPVAE
from vaekit.registry import MODELS

SHAPE = (1, 6, 6)
MLP_MODELS = [name for name in MODELS.names() if issubclass(MODELS.get(name).obj, MLPVAE)]


def make(name, **extra):
    config = {"input_shape": SHAPE, "hidden_dims": [16], "latent_dim": 3, **extra}
    if name == "cvae":
        config["num_classes"] = 4
    torch.manual_seed(0)
    return vaekit.create_model(name, **config)


def inputs(name, batch=5):
    x = torch.rand(batch, *SHAPE)
    labels = torch.arange(batch) % 4 if name == "cvae" else None
    return x, labels


@pytest.mark.parametrize("name", MLP_MODELS)
def test_encode_decode_contract(name):
    model = make(name)
    x, labels = inputs(name)
    posterior = model.encode(x, labels)
    assert posterior.mean.shape == (5, 3)
    assert posterior.kl().shape == (5,)
    decoded = model.decode(posterior.mode(), labels)
    assert decoded.shape == (5, *SHAPE)
    assert decoded.min() >= 0 and decoded.max() <= 1  # Bernoulli means
    output = model(x, labels)
    assert output.z.shape == (5, 3)
    assert not isinstance(output, torch.Tensor)  # forward computes no loss


@pytest.mark.parametrize("name", MLP_MODELS)
def test_flat_inputs_are_accepted(name):
    model = make(name)
    x, labels = inputs(name)
    torch.testing.assert_close(model.encode(x.flatten(1), labels).mean, model.encode(x, labels).mean)


@pytest.mark.parametrize("name", MLP_MODELS)
def test_save_and_load_round_trip_is_exact(name, tmp_path):
    model = make(name, likelihood="gaussian").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    vaekit.save_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["_vaekit_model"] == model.registry_name
    loaded = vaekit.load_model(tmp_path / "m")
    x, labels = inputs(name)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert torch.equal(loaded.encode(x, labels).mean, model.encode(x, labels).mean)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("name", MLP_MODELS)
def test_wrong_input_shape_is_a_clear_error(name):
    model = make(name)
    _, labels = inputs(name)
    with pytest.raises(VaekitError, match=r"expects inputs of shape \(batch, 1, 6, 6\), got \(5, 3, 6, 6\)"):
        model.encode(torch.rand(5, 3, 6, 6), labels)


def test_autoencoder_is_deterministic_and_beta_vae_is_a_preset():
    model = make("mlp-ae")
    x, _ = inputs("mlp-ae")
    assert torch.equal(model(x).z, model(x).z)
    assert model(x).posterior.kl().abs().sum() == 0
    beta = make("beta-vae")
    assert type(beta) is vaekit.models.mlp.MLPVAE and beta.config.beta == 4.0


def test_conditional_vae_needs_valid_labels():
    model = make("cvae")
    x, labels = inputs("cvae")
    with pytest.raises(VaekitError, match="needs labels"):
        model.encode(x)
    with pytest.raises(VaekitError, match=r"class ids in \[0, 4\)"):
        model.encode(x, torch.full((5,), -1))
    # The label changes the decoding of the same z.
    z = torch.zeros(1, 3)
    assert not torch.equal(model.decode(z, torch.tensor([0])), model.decode(z, torch.tensor([1])))


def test_create_model_errors():
    with pytest.raises(ConfigError, match="unknown model 'vqvae'"):
        vaekit.create_model("vqvae")
    with pytest.raises(VaekitError, match="input_shape is not set"):
        vaekit.create_model("mlp-vae")
    with pytest.raises(ConfigError, match="unknown config key model.depth"):
        vaekit.create_model("mlp-vae", input_shape=SHAPE, depth=3)


def test_load_model_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(VaekitError, match="no such model folder or run directory"):
        vaekit.load_model(tmp_path / "missing")
    with pytest.raises(VaekitError, match="neither a saved model folder"):
        vaekit.load_model(tmp_path)
    folder = vaekit.save_model(make("mlp-vae"), tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(VaekitError, match="no model.safetensors"):
        vaekit.load_model(folder)
    vaekit.save_model(make("mlp-vae", latent_dim=4), tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").rename(folder / "model.safetensors")
    with pytest.raises(VaekitError, match="does not fit the model"):
        vaekit.load_model(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(VaekitError, match="cannot be read"):
        vaekit.load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(VaekitError, match="not valid JSON"):
        vaekit.load_model(folder)


def test_tensors_are_saved_exactly_and_copied_only_when_safetensors_needs_it(tmp_path, monkeypatch):
    """Tied weights, views into one buffer and non-contiguous layouts are saveable; plain tensors go to
    safetensors as they are (no copy: a checkpoint must not need twice its memory)."""
    from safetensors.torch import load_file

    from vaekit.io import atomic

    buffer = torch.arange(24.0)
    plain = torch.randn(4, 5)
    tensors = {"plain": plain, "tied": plain, "first_half": buffer[:12], "second_half": buffer[12:],
               "transposed": torch.randn(3, 4).t(), "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)}
    handed = {}
    save_file = atomic.save_file

    def spy(written, path, metadata=None):
        handed.update(written)
        return save_file(written, path, metadata=metadata)

    monkeypatch.setattr(atomic, "save_file", spy)
    atomic.save_tensors(tmp_path / "t.safetensors", tensors)
    loaded = load_file(tmp_path / "t.safetensors")
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[key], value) for key, value in tensors.items())
    assert handed["plain"].data_ptr() == plain.data_ptr() and handed["first_half"].data_ptr() == buffer.data_ptr()
    assert handed["tied"].data_ptr() != plain.data_ptr() and handed["second_half"].data_ptr() != buffer[12:].data_ptr()
