from pathlib import Path

import pytest
import yaml

from vaekit.config import RunConfig, TrainConfig, build_run_config, load_config, parse_overrides, to_dict
from vaekit.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_the_main_job():
    config = load_config()
    assert (config.model.name, config.data.name) == ("mlp-vae", "shapes")
    assert config.train == TrainConfig()


def test_dotted_overrides_are_parsed_as_yaml_and_converted():
    config = load_config(None, ["train.lr=3e-4", "model.hidden_dims=[64,32]", "train.grad_clip=null", "seed=7"])
    assert config.train.lr == pytest.approx(3e-4) and isinstance(config.train.lr, float)
    assert config.model.params.hidden_dims == (64, 32)
    assert config.train.grad_clip is None
    assert config.seed == 7


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: cvae\n  latent_dim: 4\ndata:\n  name: digits\ntrain:\n  lr: 5e-4\n")
    config = load_config(path, ["model.latent_dim=6"])
    assert config.model.name == "cvae" and config.model.params.latent_dim == 6
    assert config.train.lr == pytest.approx(5e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.latent_dims=4", "unknown config key model.latent_dims; valid keys of model: beta, hidden_dims"),
        ("train.learning_rate=1", "unknown config key train.learning_rate"),
        ("colour=red", "unknown config key colour"),
        ("train.epochs=1.5", "train.epochs must be an integer, got 1.5"),
        ("train.epochs=true", "train.epochs must be an integer, got True"),
        ("train.lr=fast", "train.lr must be a number, got 'fast'"),
        ("model.likelihood=poisson", "model.likelihood must be one of 'bernoulli', 'continuous-bernoulli', 'gaussian', got 'poisson'"),
        ("train.adam_betas=[0.9]", "train.adam_betas must have 2 entries"),
        ("model.hidden_dims=[64,x]", "model.hidden_dims[1] must be an integer"),
        ("model.name=transformer", "unknown model 'transformer'; choose one of: autoencoder-kl, beta-vae, cvae"),
        ("data.name=mnist", "unknown dataset 'mnist'"),
        ("model.latent_dim=0", "latent_dim must be at least 1"),
        ("train=5", "train must be a mapping"),
        ("trainlr", "is not of the form section.key=value"),
    ],
)
def test_bad_config_values_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_preset_sets_its_values_and_user_values_win():
    assert load_config(None, ["model.name=beta-vae"]).model.params.beta == 4.0
    assert load_config(None, ["model.name=beta-vae", "model.beta=2"]).model.params.beta == 2.0


def test_changing_the_model_name_keeps_only_fields_the_new_model_has(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: cvae\n  num_classes: 4\n")
    assert load_config(path, ["model.name=mlp-vae"]).model.name == "mlp-vae"
    path.write_text("model:\n  hidden_dims: [64]\n  beta: 2.0\n")
    switched = load_config(path, ["model.name=mlp-ae"])  # keeps what an autoencoder has too
    assert switched.model.name == "mlp-ae" and switched.model.params.hidden_dims == (64,)


def test_round_trip_through_plain_data():
    config = load_config(None, ["model.name=cvae", "train.adam_betas=[0.5,0.9]"])
    assert build_run_config(to_dict(config)) == config
    assert isinstance(config, RunConfig)


def test_missing_or_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)


def test_parse_overrides_nests_keys():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_preset_in_configs_is_valid(path, tmp_path):
    from vaekit.config import read_yaml
    from vaekit.sweep import read_sweep_config

    raw = read_yaml(path)
    if raw.get("data", {}).get("name") == "folder-crops" and not raw["data"].get("path"):
        # a preset that must be told its data (configs/finetune-decoder.yaml) refuses to load without it
        with pytest.raises(ConfigError, match="data.path is required"):
            load_config(path)
        raw["data"]["path"] = str(tmp_path)
        path = tmp_path / path.name
        path.write_text(yaml.safe_dump(raw))
    raw, grid = read_sweep_config(path)  # validates the config without its sweep: section
    if path.stem.startswith(("sweep-", "study-")):
        assert len(grid) >= 2 if isinstance(grid, list) else all(len(values) >= 2 for values in grid.values())
    else:
        assert not grid
        load_config(path)
