"""Everything a training run holds before its first step — config, run directory, model, loss,
optimizers, EMA, data, noise and counters — built from a config, or restored from a run's latest
checkpoint when resuming.

Every source of randomness after model initialisation has its own generator whose state is
checkpointed: the data order and augmentation come from (seed, epoch, index) and the
reparameterisation noise from a ``torch.Generator``. A resumed run therefore replays exactly the
batches and noise the uninterrupted run would have used, and ends with bitwise identical weights on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaekit.config import RunConfig, build_run_config, load_config, merge, parse_overrides, save_config, to_dict
from vaekit.data import TrainingBatches, build_dataset
from vaekit.data.ranges import range_map
from vaekit.errors import ConfigError, VaekitError
from vaekit.io.checkpoints import load_checkpoint, save_checkpoint
from vaekit.losses.alignment import check_alignment_settings
from vaekit.io.layout import latest_checkpoint, remove_unfinished
from vaekit.models import create_model
from vaekit.progress import resolve_device
from vaekit.registry import LOSSES, MODELS
from vaekit.runs import CONFIG_FILE, create_run_dir, read_run_config, truncate_log
from vaekit.training.distributed import GlobalBatchNoise, launched_on_cpu, process_state, sync_batch_norm
from vaekit.training.ema import EMA
from vaekit.training.memory import log_memory_estimates
from vaekit.training.plan import resolve_for_device, steps_per_epoch, total_steps, warmup_steps
from vaekit.training.pretrained import resolve_init_from
from vaekit.training.validation import Validator, check_best_metric, restore_best

log = logging.getLogger("vaekit")

EXTENDABLE = frozenset({"train.epochs", "train.max_steps", "train.checkpoint_every", "train.validate_every",
                        "train.log_every", "train.keep_checkpoints", "train.progress_bar", "train.num_workers"})
"""What ``--resume RUN key=value`` may change: how long the run goes on, how often it reports, and the
loader workers (which do not change a batch)."""
IMAGE_VALIDATE_EVERY = 500


@dataclass
class TrainState:
    """The counters a checkpoint carries (with the weights and generator states)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    """Batches of ``epoch`` already trained on: a resumed run starts at the next one."""
    skipped_nonfinite_steps: int = 0
    consecutive_nonfinite: int = 0
    train_time_s: float = 0.0
    samples_seen: int = 0
    num_processes: int = 1
    best_value: float | None = None
    best_step: int | None = None
    last_validation_step: int | None = None

    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in meta.items() if key in names})


@dataclass
class Run:
    """A training run in progress: what the loop, the step functions and the logbook share."""

    config: RunConfig
    run_dir: Path
    accelerator: Any
    model: nn.Module
    """The model as Accelerate prepared it (wrapped for several processes); ``raw_model`` unwrapped."""
    raw_model: nn.Module
    loss_fn: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    base_lrs: dict[str, float]
    ema: EMA | None
    noise: torch.Generator
    noise_source: GlobalBatchNoise
    train_data: Any
    batches: TrainingBatches
    to_model_range: Any
    total_steps: int
    validate_every: int
    warmup_steps: int
    """Steps of the learning-rate warm-up (``train.lr_warmup_steps``, or its fraction of ``total_steps``)."""
    state: TrainState = field(default_factory=TrainState)
    validator: Validator | None = None
    snapshot: tuple[torch.Tensor, torch.Tensor | None] | None = None
    pending_best: tuple[dict, nn.Module] | None = None
    """The best weights validated since the last checkpoint, and their record: written with the next one."""

    @property
    def cfg(self):
        return self.config.train

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def scaler(self):
        return self.accelerator.scaler

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def encoder_frozen(self) -> bool:
        return self.cfg.decoder_only

    @property
    def finished(self) -> bool:
        return self.state.step >= self.total_steps

    def due(self, every: int, step: int | None = None) -> bool:
        """Whether the step just taken (or ``step``) is a multiple of ``every`` or the last one."""
        step = self.state.step if step is None else step
        return step % every == 0 or step == self.total_steps

    def saved_model(self) -> nn.Module:
        """What is validated, evaluated and saved: the EMA weights when there are any."""
        return self.ema.shadow if self.ema is not None else self.raw_model

    def micro_batch(self, micro: int, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A loader batch on the device, in the model's value range, with the noise set for its global batch."""
        x, labels = batch
        self.noise_source.global_batch = self.batches.global_batch_size(self.state.batch_in_epoch + micro)
        x = self.to_model_range(x.to(self.device, non_blocking=True))
        return x, (labels.to(self.device, non_blocking=True) if self.raw_model.conditional else None)

    def stateful_modules(self) -> dict[str, nn.Module]:
        return {"loss": self.loss_fn, **({"ema": self.ema} if self.ema is not None else {})}

    def save_checkpoint(self) -> Path | None:
        saved = None
        if self.is_main:
            saved = save_checkpoint(self.checkpoint_dir, self.state.step, self.raw_model, self.optimizers,
                                    {"noise": self.noise}, {k: v for k, v in dataclasses.asdict(self.state).items()
                                                            if k != "step"},
                                    self.stateful_modules(), keep=self.cfg.keep_checkpoints, scaler=self.scaler)
        self.accelerator.wait_for_everyone()
        return saved


# ---------------------------------------------------------------------------------------------- config


def as_run_config(config: RunConfig | dict | str | Path | None) -> RunConfig:
    if config is None:
        return load_config()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return build_run_config(config)
    return load_config(config)


def _changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [k for key in keys for k in _changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [prefix.rstrip(".")]


def resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The run's saved config, with ``overrides`` that only extend the run (``EXTENDABLE``); any other
    change is refused with its name. An accepted change is written back to the run's config."""
    saved = read_run_config(run_dir)
    if not overrides:
        return saved
    config = build_run_config(merge(to_dict(saved), parse_overrides(overrides)))
    changed = _changed_keys(to_dict(saved), to_dict(config))
    refused = [key for key in changed if key not in EXTENDABLE]
    if refused:
        raise ConfigError(f"--resume continues {run_dir} as it was configured: {refused[0]} cannot change "
                          f"(a resumed run may change only {', '.join(sorted(EXTENDABLE))}); start a new run instead")
    if process_state().is_main_process:
        save_config(config, run_dir / CONFIG_FILE)
    return config


def resolve_for_data(config: RunConfig, dataset) -> RunConfig:
    """Fill the model fields that follow from the data (input shape, number of classes) and check them."""
    model_class = MODELS.get(config.model.name).obj
    updates = model_class.config_for_data(config.model.params, tuple(dataset.image_shape),
                                          dataset.num_classes if dataset.has_labels else None, dataset.name)
    model = dataclasses.replace(config.model, params=dataclasses.replace(config.model.params, **updates))
    return dataclasses.replace(config, model=model)


def create_run_dir_once(config: RunConfig) -> Path:
    """The main process creates the run directory (its name may hold the time) and tells the others."""
    from accelerate.utils import broadcast_object_list

    state = process_state()
    message: list = [None]
    if state.is_main_process:
        try:
            run_dir = create_run_dir(config)
            save_config(config, run_dir / CONFIG_FILE)
            message = [str(run_dir)]
        except VaekitError as err:
            message = [err]
    if state.num_processes > 1:
        broadcast_object_list(message, from_process=0)
    if isinstance(message[0], VaekitError):
        raise message[0]
    return Path(message[0])


# ---------------------------------------------------------------------------------------------- build


def build_model(config: RunConfig, source: nn.Module | None) -> nn.Module:
    """The run's model: ``source``'s weights when there is one, the encoder frozen for ``train.decoder_only``."""
    model = create_model(config.model.name, **dataclasses.asdict(config.model.params))
    if source is not None:
        model.load_state_dict(source.state_dict())
    if config.train.decoder_only:
        for frozen in model.encoder_modules():
            frozen.requires_grad_(False)
    return model


def _optimizers(config: RunConfig, raw_model: nn.Module, loss_fn: nn.Module) -> dict[str, torch.optim.Optimizer]:
    """AdamW for the model and the loss's own parameters; a second one for a discriminator. Not wrapped
    by Accelerate: its wrapper costs ~0.3 ms a step (more than a small model's whole optimizer step),
    and the step functions do what it would (fp16 loss scaling) in sight."""
    cfg = config.train
    betas = cfg.adam_betas or raw_model.adam_betas
    trainable = [p for p in raw_model.parameters() if p.requires_grad] + loss_fn.generator_parameters()
    optimizers = {"model": make_optimizer(trainable, cfg.lr, betas, cfg.weight_decay)}
    if loss_fn.discriminator is not None:
        optimizers["discriminator"] = make_optimizer(list(loss_fn.discriminator.parameters()),
                                                     loss_fn.config.disc_lr or cfg.lr, betas, cfg.weight_decay)
    return optimizers


def make_optimizer(params: list[nn.Parameter], lr: float, betas: tuple[float, float],
                   weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel where torch has one for the parameters' device (CPU and CUDA):
    on 2 CPU cores that makes a small model's step ~10 % faster than the default per-tensor loop."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused)


def _check_explore_settings(config: RunConfig, test_data) -> None:
    """The figures drawn after training fail on names that are not the data's classes: say so now."""
    for key in ("arithmetic_source", "arithmetic_target"):
        name = getattr(config.explore, key)
        if name is not None and name not in test_data.class_names:
            classes = ", ".join(test_data.class_names) or "none: the data has no labels"
            raise ConfigError(f"explore.{key} is {name!r}, which is not a class of {test_data.name}; its classes: {classes}")


def _resolve(config: RunConfig | dict | str | Path | None, resume: str | Path | None,
             overrides: list[str] | tuple[str, ...]) -> tuple[RunConfig, Path | None, Path | None, nn.Module | None]:
    """(config, run directory, checkpoint, pretrained source): a resumed run's saved config (extended by
    ``overrides``) and latest checkpoint, or a new run's config with its ``init_from`` source loaded."""

    if resume is not None:
        if config is not None:
            raise VaekitError("give either a config or a run directory to resume, not both")
        run_dir = Path(resume)
        config = resume_config(run_dir, list(overrides))
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
        if checkpoint is None:
            raise VaekitError(f"{run_dir} has no checkpoint to resume from; start a new run instead")
        return config, run_dir, checkpoint, None
    if overrides:
        raise VaekitError("overrides go into the config for a new run; pass them with resume= only to extend one")
    config, source = new_run_config(config)
    return config, None, None, source


def new_run_config(config: RunConfig | dict | str | Path | None) -> tuple[RunConfig, nn.Module | None]:
    """A new run's config, with the architecture of its ``model.init_from`` source, and the source loaded
    (None without one); settings that need a pretrained model are checked."""
    config = as_run_config(config)
    source = None
    if config.model.init_from is not None:
        model_section, source = resolve_init_from(config.model)
        config = dataclasses.replace(config, model=model_section)
    check_alignment_settings(getattr(config.loss.params, "vf_model", None), config.train.decoder_only)
    if config.train.decoder_only and config.model.init_from is None:
        raise ConfigError("train.decoder_only=true freezes the encoder, which is only meaningful for a pretrained "
                          "one: set model.init_from to the model to fine-tune (a folder, checkpoint or hub name)")
    return config, source


def _accelerator_device(device: str | None) -> bool:
    """Whether Accelerate must be told ``cpu=True`` for ``device`` ("auto"/None: a GPU when there is one);
    a numbered GPU becomes the current CUDA device, which Accelerate takes."""
    if launched_on_cpu():
        return True
    if device in (None, "auto"):
        return False
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is not None:
        if process_state().num_processes > 1:
            raise ConfigError(f"--device {device}: with several processes each takes its own GPU; leave --device "
                              "at auto (or cuda)")
        torch.cuda.set_device(resolved.index)
    return resolved.type == "cpu"


def build_run(config: RunConfig | dict | str | Path | None, resume: str | Path | None = None,
              overrides: list[str] | tuple[str, ...] = (), device: str | None = None) -> Run:
    """A new run from ``config``, or the run directory ``resume`` restored from its latest checkpoint
    (with ``overrides`` that extend it), on ``device`` (default: a GPU when there is one; with several
    processes, each process's own)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    config, run_dir, checkpoint, source = _resolve(config, resume, overrides)
    on_cpu = _accelerator_device(device)
    config = resolve_for_device(config, not on_cpu and torch.cuda.is_available())
    cfg = config.train
    if cfg.tensorboard:
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise VaekitError("train.tensorboard=true needs TensorBoard: pip install 'vaekit[tensorboard]'")
    set_seed(config.seed)
    train_data = build_dataset(config.data, "train")
    config = resolve_for_data(config, train_data)
    test_data = build_dataset(config.data, "test")
    _check_explore_settings(config, test_data)
    check_best_metric(MODELS.get(config.model.name).obj, cfg.best_metric)
    if run_dir is None:
        run_dir = create_run_dir_once(config)

    # Accelerate keeps its settings (mixed precision) process-wide; forget them, keeping the process
    # group, so one process can train runs of different precision one after another (sweeps, the API).
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=cfg.mixed_precision,
                              log_with="tensorboard" if cfg.tensorboard else None, project_dir=str(run_dir))
    device = accelerator.device
    model = build_model(config, source)
    loss_fn = LOSSES.get(config.loss.name).obj.for_model(config.loss.params, model).to(device)
    if accelerator.num_processes > 1 and loss_fn.discriminator is not None:
        sync_batch_norm(loss_fn.discriminator, device)
    prepared = accelerator.prepare(model)
    raw_model = accelerator.unwrap_model(prepared)
    optimizers = _optimizers(config, raw_model, loss_fn)
    noise = torch.Generator(device=device).manual_seed(config.seed)
    batches = TrainingBatches(train_data, cfg.batch_size, config.seed, accelerator.num_processes,
                              accelerator.process_index, cfg.num_workers, pin_memory=device.type == "cuda")
    per_epoch = steps_per_epoch(len(train_data), cfg, accelerator.num_processes)
    steps = total_steps(cfg, per_epoch)
    default_every = per_epoch if raw_model.has_likelihood else IMAGE_VALIDATE_EVERY
    run = Run(config, run_dir, accelerator, prepared, raw_model, loss_fn, optimizers,
              {name: opt.param_groups[0]["lr"] for name, opt in optimizers.items()},
              EMA(raw_model, cfg.ema_decay) if cfg.ema_decay else None, noise,
              GlobalBatchNoise(noise, accelerator.num_processes, accelerator.process_index), train_data, batches,
              range_map(train_data.value_range, raw_model.value_range), steps,
              cfg.validate_every or max(1, default_every), warmup_steps(cfg, steps))
    run.state.num_processes = accelerator.num_processes
    if run.is_main:
        run.validator = _validator(run, test_data)
        if cfg.snapshot_examples > 0:
            x, labels = test_data.__getitems__(test_data.spread_indices(cfg.snapshot_examples, config.seed))
            run.snapshot = (range_map(test_data.value_range, raw_model.value_range)(x).to(device),
                            labels.to(device) if raw_model.conditional else None)
    if checkpoint is not None:
        _restore(run, checkpoint)
    if train_data.skipped and run.is_main:
        log.warning("%d unreadable file(s) skipped in the training data", len(train_data.skipped))
    return run


def owes_validation(run: Run, state: TrainState) -> bool:
    """Whether a validation fell due at ``state``'s step but had not run when its checkpoint was written (the
    trainer checkpoints first, so that a validation that fails loses no steps)."""
    return state.step > 0 and state.last_validation_step != state.step and run.due(run.validate_every, state.step)


def _validator(run: Run, test_data) -> Validator:
    """The validator, with its batch size (for image autoencoders, by default, chosen at the first
    validation from the memory available then); for image autoencoders, the memory estimates logged."""
    config, cfg, model = run.config, run.cfg, run.raw_model
    image_autoencoder = model.kind == "autoencoder" and not model.has_likelihood
    batch_size = cfg.validation_batch_size or (None if image_autoencoder else config.eval.batch_size)
    validator = Validator(model, test_data, cfg.validation_examples, cfg.best_metric, config.seed, batch_size,
                          run.device, range_map(test_data.value_range, model.value_range))
    if image_autoencoder:
        micro_batch = math.ceil(cfg.batch_size / run.accelerator.num_processes)
        log_memory_estimates(model, run.train_data.image_shape, micro_batch, cfg.decoder_only, run.ema is not None,
                             validator.bytes_per_image, cfg.validation_batch_size, run.device, cfg.mixed_precision)
    return validator


def _restore(run: Run, checkpoint: Path) -> None:
    meta = load_checkpoint(checkpoint, run.raw_model, run.optimizers, {"noise": run.noise}, run.stateful_modules(),
                           scaler=run.scaler)
    state = TrainState.from_checkpoint(meta)
    if run.is_main:
        truncate_log(run.run_dir, state.step, validated=not owes_validation(run, state))
        restore_best(run.run_dir)
        remove_unfinished(run.checkpoint_dir)
        log.info("resuming %s from %s (step %d of %d)", run.run_dir, checkpoint.name, state.step, run.total_steps)
        processes = run.accelerator.num_processes
        if state.num_processes != processes:
            cfg = run.cfg
            log.info("the run was trained on %d process(es) and resumes on %d: the global batch (%d), the data "
                     "order and the noise per example stay the same; each process now takes %d examples a "
                     "step instead of %d, and sums are grouped differently, so the weights follow the "
                     "uninterrupted run up to float rounding, not bitwise", state.num_processes, processes,
                     cfg.batch_size, math.ceil(cfg.batch_size / processes),
                     math.ceil(cfg.batch_size / state.num_processes))
    state.num_processes = run.accelerator.num_processes
    run.state = state
