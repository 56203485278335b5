"""Run configuration: dataclasses are the schema, YAML holds what differs, the CLI takes dotted overrides.

A run config has six sections and three top-level values::

    model: {name: mlp-vae, latent_dim: 8, ...}   # fields of the model's ...Config (and init_from: PATH)
    data:  {name: shapes, ...}                    # fields of the dataset's ...Config
    loss:  {name: elbo}                           # default: the model's loss; fields of its ...Config
    train: {...}                                  # TrainConfig
    eval:  {...}                                  # EvalConfig
    explore: {...}                                # ExploreConfig
    seed: 0
    output_dir: runs
    run_name: null

Unknown keys and values of the wrong type are errors that name the key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vaekit.errors import ConfigError
from vaekit.io.layout import source_model_name
from vaekit.registry import DATASETS, LOSSES, MODELS, Registry


@dataclass
class TrainConfig:
    epochs: int = 50
    """Passes over the training data (train.max_steps may stop earlier)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps, even mid-epoch (the learning-rate schedule ends there)."""
    batch_size: int = 128
    """The global batch: with N processes, each takes every N-th example of it."""
    lr: float = 1e-3
    """The peak learning rate of AdamW (reached after train.lr_warmup_steps)."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    adam_betas: tuple[float, float] | None = None
    """AdamW's betas; default: the model's own ((0.9, 0.999) for the small models, LDM's (0.5, 0.9) for
    image autoencoders)."""
    lr_warmup_steps: int = 0
    """The learning rate rises linearly over this many steps."""
    lr_warmup_fraction: float = 0.0
    """The warm-up as a share of the run's optimizer steps, instead of train.lr_warmup_steps: for a budget in
    epochs, whose step count follows the size of the data."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: constant, or cosine decay to 0 at the last step."""
    ema_decay: float | None = None
    """Keep an exponential moving average of the weights (e.g. 0.999; the decay warms up as
    min(ema_decay, (1 + n) / (10 + n)) after n updates); it is what is validated, evaluated and saved."""
    grad_accumulation: int = 1
    """Micro-batches of batch_size per optimizer step (the effective batch is their product)."""
    decoder_only: bool = False
    """Freeze the encoder (and quant conv) of a pretrained model (model.init_from): fine-tune the decoder
    alone, as for sd-vae-ft-mse."""
    grad_clip: float | None = 10.0
    """Clip the gradient's global norm to this before each step; null: no clipping."""
    kl_warmup_steps: int = 0
    """The KL weight rises linearly from 0 to β over this many optimizer steps."""
    checkpoint_every: int = 500
    """Optimizer steps between checkpoints; one is always written at the end of training."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest); older ones are deleted as new ones are written."""
    validate_every: int | None = None
    """Optimizer steps between validations on a fixed held-out subset (and at the end); default: once per
    epoch for the small models, every 500 steps for image autoencoders."""
    validation_examples: int = 256
    """Size of the fixed held-out subset validated on (taken from the test split)."""
    validation_batch_size: int | None = None
    """Held-out examples validated at a time. null: for image autoencoders, the most whose estimated
    encode + decode memory fits the device's available memory (chosen at the first validation and logged;
    see docs/gpu.md), for the other models eval.batch_size. An out-of-memory error during validation halves
    the batch and tries again, down to 1."""
    best_metric: str | None = None
    """Validation metric whose best value keeps a copy of the weights in RUN_DIR/best/; default psnr for
    image autoencoders, negative_elbo for VAEs, reconstruction for plain autoencoders."""
    calibrate_latents: Literal["auto", "always", "never"] = "auto"
    """Measure the latent scaling factor (and the shift, where the model has one) at the end of training
    and store it in the saved model. auto: image autoencoders, unless the encoder was frozen (then the
    latents are the pretrained model's and so is its factor)."""
    calibration_images: int = 1024
    """Training examples whose posterior samples the scaling factor is measured on."""
    log_every: int = 25
    """Optimizer steps per line of train_log.jsonl (means over the interval) and per log line off a terminal."""
    max_nonfinite_steps: int = 5
    """Consecutive steps with a non-finite loss or gradient after which the run stops."""
    num_workers: int | Literal["auto"] = 0
    """DataLoader worker processes (threads, for a streamed dataset); any number gives the same batches. auto:
    4 on a CUDA GPU (fewer on a machine with fewer cores), 0 elsewhere (the CPU's cores train the model, and
    without workers batches are still read two ahead in a thread)."""
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    """Autocast precision on a GPU: no (float32), bf16, or fp16 (with a loss scaler); auto: bf16 on a CUDA GPU
    that has it (Ampere and later), float32 elsewhere (the CPU, where bf16 autocast is slow); see docs/gpu.md."""
    tensorboard: bool = False
    """Also log to TensorBoard under the run directory (pip install 'vaekit[tensorboard]')."""
    progress_bar: bool = True
    """A progress bar on a terminal (a log line per train.log_every steps elsewhere)."""
    snapshot_examples: int = 8
    """Fixed test examples reconstructed at the end of every epoch, for the training-progression
    figure; 0 turns snapshots off."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accumulation", "checkpoint_every", "log_every",
                     "max_nonfinite_steps", "max_steps", "validate_every", "validation_examples",
                     "validation_batch_size", "calibration_images"):
            minimum = 0 if name == "epochs" else 1
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"train.{name} must be at least {minimum}, got {value}")
        if self.num_workers != "auto" and self.num_workers < 0:
            raise ValueError(f"train.num_workers must be at least 0 (or auto), got {self.num_workers}")
        if not 0.0 <= self.lr_warmup_fraction < 1.0:
            raise ValueError(f"train.lr_warmup_fraction must be in [0, 1), got {self.lr_warmup_fraction}")
        if self.lr_warmup_fraction and self.lr_warmup_steps:
            raise ValueError("give the warm-up as train.lr_warmup_steps or as train.lr_warmup_fraction, not both")


@dataclass
class EvalConfig:
    iwae_samples: int = 1000
    """k of the importance-weighted bound on log p(x); 0 skips it."""
    batch_size: int = 256
    """Test examples evaluated at a time."""
    active_unit_threshold: float = 0.01
    """A latent dimension is active when its posterior mean varies over the test data by more than this (variance)."""


@dataclass
class ExploreConfig:
    """What `vaekit explore` draws. Class names refer to the dataset's labels."""

    num_examples: int = 10
    """Test examples in the reconstruction figure."""
    sample_grid: int = 8
    """Prior samples: a grid of sample_grid × sample_grid (one row per class for a conditional VAE)."""
    interpolation_pairs: int = 4
    """Pairs of test examples interpolated between."""
    interpolation_steps: int = 10
    """Points along each interpolation, ends included."""
    traversal_steps: int = 9
    """Values per latent dimension in the traversal figure."""
    traversal_extent: float = 3.0
    """Traversals run over ±this many prior standard deviations."""
    neighbour_queries: int = 6
    """Test examples whose nearest neighbours are shown."""
    neighbours: int = 6
    """Nearest neighbours shown per query (by distance between posterior means)."""
    map_examples: int = 2000
    """At most this many test examples in the latent maps (t-SNE is quadratic in them)."""
    walk_frames_per_class: int = 12
    """Frames of the latent-walk GIF between consecutive class centroids."""
    arithmetic_source: str | None = None
    """Class whose examples are moved (default: the first class)."""
    arithmetic_target: str | None = None
    """Class whose centroid they are moved towards (default: the second class)."""
    progression_rows: int = 10
    """At most this many training snapshots in the progression figure (first and last always)."""


@dataclass
class ComponentConfig:
    """A registered component (model, dataset or loss) and the fields of its own ...Config.

    ``init_from`` (models only): weights to start from, whose architecture the model takes
    (``vaekit.training.pretrained``). ``given``: the keys the config spelled out, as opposed to defaults.
    """

    name: str
    params: Any
    init_from: str | None = None
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)


@dataclass
class RunConfig:
    model: ComponentConfig
    data: ComponentConfig
    loss: ComponentConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    seed: int = 0
    """Seeds the model's initialisation, the data order and augmentation, and all noise."""
    output_dir: str = "runs"
    """Where run directories are created."""
    run_name: str | None = None
    """The run directory's name (default: the model, data and time)."""


DEFAULT_MODEL = "mlp-vae"
DEFAULT_DATA = "shapes"


def build_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate ``cls`` from ``values``, rejecting unknown keys and converting/validating types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; valid keys{' of ' + where if where else ''}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {
        key: coerce(value, hints[key], f"{where}.{key}" if where else key)
        for key, value in values.items()
    }
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ validation
        raise ConfigError(f"{where or 'config'}: {err}") from None


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` as ``annotation`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {annotation}")
    if origin is Literal:
        if value is False and "no" in args:  # YAML 1.1 reads a bare `no` (mixed_precision: no) as false
            return "no"
        if value in args:
            return value
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} must have {len(args)} entries, got {list(value)!r}")
            items = [coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_type = args[0] if args else Any
            items = [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return value if isinstance(value, annotation) else build_dataclass(annotation, value, key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise TypeError(f"config type {annotation} of {key} is not supported")


def _component(registry: Registry, raw: Any, default_name: str, section: str) -> ComponentConfig:
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{section} must be a mapping of keys to values, got {raw!r}")
    raw = dict(raw or {})
    given = frozenset(raw)
    name = raw.pop("name", default_name)
    init_from = raw.pop("init_from", None) if section == "model" else None
    if init_from is not None and not isinstance(init_from, str):
        raise ConfigError(f"model.init_from must be a path or a Hugging Face hub name, got {init_from!r}")
    entry = registry.get(name)
    params = build_dataclass(entry.config_cls, {**entry.defaults, **raw}, section)
    return ComponentConfig(name, params, init_from, given)


def build_run_config(raw: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a nested dict (as read from YAML plus overrides)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    model_raw = raw.pop("model", None)
    default_model = DEFAULT_MODEL
    if isinstance(model_raw, dict) and isinstance(model_raw.get("init_from"), str) and "name" not in model_raw:
        default_model = source_model_name(model_raw["init_from"])  # the source decides what the model is
    model = _component(MODELS, model_raw, default_model, "model")
    data = _component(DATASETS, raw.pop("data", None), DEFAULT_DATA, "data")
    loss = _component(LOSSES, raw.pop("loss", None), MODELS.get(model.name).obj.loss_name, "loss")
    return build_dataclass(RunConfig, {**raw, "model": model, "data": data, "loss": loss}, "")


def to_dict(config: Any) -> Any:
    """Plain-data view (dicts, lists, scalars) of a config, for YAML/JSON."""
    if isinstance(config, ComponentConfig):
        source = {"init_from": config.init_from} if config.init_from is not None else {}
        return {"name": config.name, **source, **to_dict(config.params)}
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "model.hidden_dims=[256,128]"]`` -> nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. train.lr=3e-4)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part}")
        node[leaf] = value
    return nested


COMPONENTS = {"model": (MODELS, DEFAULT_MODEL), "data": (DATASETS, DEFAULT_DATA), "loss": (LOSSES, "elbo")}


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins. When ``update`` switches the model or dataset to another
    name, the old section keeps only the fields the new one also has (so ``model.name=mlp-ae`` keeps
    ``hidden_dims`` but drops a cvae's ``num_classes``)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            old = out[key]
            if key in COMPONENTS and "name" in value:
                registry, default = COMPONENTS[key]
                if value["name"] != old.get("name", default):
                    fields = {f.name for f in dataclasses.fields(registry.get(value["name"]).config_cls)}
                    old = {k: v for k, v in old.items() if k in fields or k == "init_from"}
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (presets are in configs/ of the vaekit checkout)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model, data, loss, train, eval, explore), not {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw = read_yaml(path) if path is not None else {}
    return build_run_config(merge(raw, parse_overrides(overrides or [])))


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
