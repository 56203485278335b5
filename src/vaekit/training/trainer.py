"""The trainer: one loop, read top to bottom, on Accelerate (CPU now; GPUs and processes unchanged).

Every source of randomness after model initialisation has its own generator whose state is
checkpointed: the data order comes from (seed, epoch) and the reparameterisation noise from a
``torch.Generator``. A resumed run therefore replays exactly the batches and noise the uninterrupted
run would have used, and ends with bitwise identical weights on CPU.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from vaekit.config import RunConfig, TrainConfig, build_run_config, load_config, save_config
from vaekit.data import ImageDataset, batch_loader, build_dataset
from vaekit.errors import ConfigError, TrainingDiverged, VaekitError
from vaekit.evaluation import evaluate
from vaekit.fileio import write_text
from vaekit.losses import linear_warmup
from vaekit.registry import LOSSES
from vaekit.models.io import create_model, save_model
from vaekit.runs import CONFIG_FILE, LOG_FILE, create_run_dir, read_run_config, update_metrics
from vaekit.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vaekit.training.distributed import (GlobalBatchNoise, any_process, average_gradients, launched_on_cpu,
                                         mean_over_processes, process_state, sync_batch_norm)
from vaekit.data.ranges import range_map
from vaekit.training.ema import EMA
from vaekit.training.snapshots import save_snapshot

log = logging.getLogger("vaekit")


class TrainingInterrupted(VaekitError):
    """The run was stopped by SIGINT/SIGTERM after saving a checkpoint; it can be resumed."""


class EpochBatchSampler:
    """Batches of a permutation drawn from (seed, epoch); resumable mid-epoch; sharded across processes.

    A batch is ``batch_size`` examples in total; process ``p`` of ``n`` takes every n-th of them.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, num_processes: int = 1, process_index: int = 0):
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        batches = math.ceil(self.num_examples / self.batch_size)
        last = self.num_examples - (batches - 1) * self.batch_size
        # A last batch too small to give every process an example is dropped (an empty share would stall DDP).
        return batches - 1 if batches > 1 and last < self.num_processes else batches

    def global_batch_size(self, batch: int) -> int:
        """Examples in batch ``batch`` of an epoch, over all processes."""
        return min(self.batch_size, self.num_examples - batch * self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_examples)
        for b in range(self.start_batch, self.batches_per_epoch):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.process_index::self.num_processes].tolist()


def make_optimizer(params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float],
                   weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel where torch has one for the parameters' device (CPU and CUDA):
    on 2 CPU cores that makes a small model's step ~10 % faster than the default per-tensor loop."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused)


def learning_rate_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``lr_warmup_steps``, then constant or cosine decay to 0 at the last step."""
    if step < cfg.lr_warmup_steps:
        return (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.lr_warmup_steps) / max(1, total_steps - cfg.lr_warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def apply_gradients(optimizer: torch.optim.Optimizer, scaler, clip: float | None,
                    loss_value: float, update_scaler: bool = True) -> tuple[bool, torch.Tensor]:
    """Unscale (fp16), clip, step when the loss and gradient are finite, zero the gradients.

    Returns (finite, gradient norm). fp16's loss scaler skips overflowing gradients itself (and lowers
    its scale); elsewhere a non-finite gradient is ours to skip. With two optimizers on one batch the
    scaler is updated once, after the last of them (``update_scaler``).
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip or math.inf)
    finite = math.isfinite(loss_value) and (scaler is not None or bool(torch.isfinite(grad_norm)))
    if scaler is not None:
        if finite:
            scaler.step(optimizer)
        if update_scaler:
            scaler.update()
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite, grad_norm


def resolve_for_data(config: RunConfig, dataset: ImageDataset) -> RunConfig:
    """Fill the model fields that follow from the data (input shape, number of classes) and check them."""
    params = config.model.params
    updates: dict[str, Any] = {}
    if hasattr(params, "input_shape"):
        if params.input_shape is None:
            updates["input_shape"] = dataset.image_shape
        elif tuple(params.input_shape) != dataset.image_shape:
            raise ConfigError(
                f"model.input_shape is {list(params.input_shape)} but {dataset.name} has images of shape "
                f"{list(dataset.image_shape)}; remove model.input_shape to take it from the data"
            )
    if hasattr(params, "num_classes"):
        if not dataset.has_labels:
            raise ConfigError(f"model {config.model.name} needs labels, and {dataset.name} has none")
        if params.num_classes is None:
            updates["num_classes"] = dataset.num_classes
        elif params.num_classes != dataset.num_classes:
            raise ConfigError(
                f"model.num_classes is {params.num_classes} but {dataset.name} has {dataset.num_classes} classes"
            )
    if hasattr(params, "in_channels") and params.in_channels != dataset.image_shape[0]:
        raise ConfigError(
            f"model {config.model.name} takes {params.in_channels}-channel images and {dataset.name} has "
            f"{dataset.image_shape[0]} channel(s); set model.in_channels and model.out_channels to "
            f"{dataset.image_shape[0]}, or data.grayscale=false for a folder"
        )
    model = dataclasses.replace(config.model, params=dataclasses.replace(params, **updates))
    return dataclasses.replace(config, model=model)


@contextmanager
def stop_on_signal() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event that the loop checks between steps, so the run stops at a clean
    point with a checkpoint; a second Ctrl-C stops at once."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        log.warning("stopping after this step (signal %d); press Ctrl-C again to stop at once", signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _as_run_config(config: RunConfig | dict | str | Path | None) -> RunConfig:
    if config is None:
        return load_config()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return build_run_config(config)
    return load_config(config)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from (they will be written again)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        write_text(path, "".join(line + "\n" for line in kept))


def _create_run_dir_once(config: RunConfig) -> Path:
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


def train(
    config: RunConfig | dict | str | Path | None = None,
    *,
    resume: str | Path | None = None,
    evaluate_at_end: bool = True,
    explore: bool = True,
) -> Path:
    """Train a model and return its run directory.

    ``config``: a RunConfig, a nested dict, a YAML path, or None for the defaults (MLP VAE on shapes).
    ``resume``: a run directory to continue from its latest checkpoint (``config`` must then be None).
    ``evaluate_at_end`` / ``explore``: evaluate on the test split / draw the figures and report.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    if resume is not None:
        if config is not None:
            raise VaekitError("give either a config or a run directory to resume, not both")
        run_dir = Path(resume)
        config = read_run_config(run_dir)
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
        if checkpoint is None:
            raise VaekitError(f"{run_dir} has no checkpoint to resume from; start a new run instead")
    else:
        config = _as_run_config(config)
        checkpoint = None
    cfg = config.train

    if cfg.tensorboard:
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise VaekitError("train.tensorboard=true needs TensorBoard: pip install 'vaekit[tensorboard]'")
    set_seed(config.seed)
    train_data = build_dataset(config.data, "train")
    config = resolve_for_data(config, train_data)
    if resume is None:
        run_dir = _create_run_dir_once(config)

    # Accelerate keeps its settings (mixed precision) process-wide; forget them, keeping the process
    # group, so one process can train runs of different precision one after another (sweeps, the API).
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        cpu=launched_on_cpu(),
        mixed_precision=cfg.mixed_precision,
        log_with="tensorboard" if cfg.tensorboard else None,
        project_dir=str(run_dir),
    )
    is_main = accelerator.is_main_process
    device = accelerator.device
    model = create_model(config.model.name, **dataclasses.asdict(config.model.params))
    if cfg.decoder_only:
        for frozen in (model.encoder, getattr(model, "quant_conv", None)):
            if frozen is not None:
                frozen.requires_grad_(False)
    loss_fn = LOSSES.get(config.loss.name).obj.for_model(config.loss.params, model).to(device)
    if accelerator.num_processes > 1 and getattr(loss_fn, "discriminator", None) is not None:
        sync_batch_norm(loss_fn.discriminator, device)
    to_model_range = range_map(train_data.value_range, model.value_range)
    model = accelerator.prepare(model)
    raw_model = accelerator.unwrap_model(model)
    betas = cfg.adam_betas or raw_model.adam_betas
    # The optimizers are not wrapped by Accelerate: its wrapper costs ~0.3 ms a step (more than a small
    # model's whole optimizer step), and the loop below does what it would (fp16 loss scaling) in sight.
    optimizers = {"model": make_optimizer([p for p in raw_model.parameters() if p.requires_grad]
                                          + loss_fn.generator_parameters(), cfg.lr, betas, cfg.weight_decay)}
    if loss_fn.has_discriminator and loss_fn.discriminator is not None:
        disc_lr = loss_fn.config.disc_lr or cfg.lr
        optimizers["discriminator"] = make_optimizer(list(loss_fn.discriminator.parameters()), disc_lr, betas,
                                                     cfg.weight_decay)
    base_lrs = {name: opt.param_groups[0]["lr"] for name, opt in optimizers.items()}
    optimizer = optimizers["model"]
    ema = EMA(raw_model, cfg.ema_decay) if cfg.ema_decay else None
    checkpointed = {"loss": loss_fn, **({"ema": ema} if ema is not None else {})}
    gan_arguments = {"last_layer": loss_fn.last_layer(raw_model)} if loss_fn.has_discriminator else {}
    scaler = accelerator.scaler
    conditional = getattr(raw_model, "conditional", False)
    noise = torch.Generator(device=device).manual_seed(config.seed)
    noise_source = GlobalBatchNoise(noise, accelerator.num_processes, accelerator.process_index)
    # Parameters outside the DDP wrapper whose gradients the processes must average themselves.
    unwrapped = {"model": loss_fn.generator_parameters(),
                 "discriminator": list(loss_fn.discriminator.parameters())
                 if getattr(loss_fn, "discriminator", None) is not None else []}

    sampler = EpochBatchSampler(len(train_data), cfg.batch_size, config.seed,
                                accelerator.num_processes, accelerator.process_index)
    loader = batch_loader(train_data, batch_sampler=sampler, num_workers=cfg.num_workers,
                          pin_memory=device.type == "cuda")
    total_steps = cfg.epochs * math.ceil(sampler.batches_per_epoch / cfg.grad_accumulation)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "skipped_nonfinite_steps": 0,
                             "train_time_s": 0.0, "samples_seen": 0, "num_processes": accelerator.num_processes}
    log_path = run_dir / LOG_FILE
    if checkpoint is not None:
        state.update(load_checkpoint(checkpoint, raw_model, optimizers, {"noise": noise}, checkpointed))
        if is_main:
            _truncate_log(log_path, state["step"])
            log.info("resuming %s from %s (step %d of %d)", run_dir, checkpoint.name, state["step"], total_steps)
            before = state.get("num_processes", 1)
            if before != accelerator.num_processes:
                log.info("the run was trained on %d process(es) and resumes on %d: the global batch (%d), the data "
                         "order and the noise per example stay the same; each process now takes %d examples a "
                         "step instead of %d, and sums are grouped differently, so the weights follow the "
                         "uninterrupted run up to float rounding, not bitwise", before, accelerator.num_processes,
                         cfg.batch_size, math.ceil(cfg.batch_size / accelerator.num_processes),
                         math.ceil(cfg.batch_size / before))
            state["num_processes"] = accelerator.num_processes
    if train_data.skipped and is_main:
        log.warning("%d unreadable file(s) skipped in the training data", len(train_data.skipped))

    checkpoint_dir = run_dir / "checkpoints"
    if cfg.snapshot_examples > 0 and is_main:
        test_data = build_dataset(config.data, "test")
        snapshot_x, snapshot_labels = test_data.__getitems__(test_data.spread_indices(cfg.snapshot_examples, config.seed))
        snapshot_x = to_model_range(snapshot_x.to(device))
        snapshot_labels = snapshot_labels.to(device) if conditional else None

    started = time.perf_counter()

    def clock_in() -> None:
        """Move the time since the last call into the state (checkpoint writes count as training time)."""
        nonlocal started
        now = time.perf_counter()
        state["train_time_s"] += now - started
        started = now

    def save() -> Path | None:
        clock_in()
        saved = None
        if is_main:
            saved = save_checkpoint(checkpoint_dir, state["step"], raw_model, optimizers, {"noise": noise},
                                    {k: v for k, v in state.items() if k != "step"}, checkpointed,
                                    keep=cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
        return saved

    if cfg.tensorboard:
        accelerator.init_trackers("tensorboard")
    progress = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", dynamic_ncols=True,
                    disable=not (is_main and cfg.progress_bar))
    interval: dict[str, float] = {}
    consecutive_nonfinite = 0
    log_file = open(log_path, "a") if is_main else None
    try:
        with stop_on_signal() as stop_requested:
            for epoch in range(state["epoch"], cfg.epochs):
                sampler.set_epoch(epoch, state["batch_in_epoch"])
                batches = iter(loader)
                # One optimizer step per group of grad_accumulation micro-batches (groups end with the epoch).
                while group := list(itertools.islice(batches, cfg.grad_accumulation)):
                    kl_weight = loss_fn.beta * linear_warmup(state["step"], cfg.kl_warmup_steps)
                    lr_factor = learning_rate_factor(state["step"], total_steps, cfg)
                    for name, opt in optimizers.items():
                        for param_group in opt.param_groups:
                            param_group["lr"] = base_lrs[name] * lr_factor
                    step_arguments = {**gan_arguments, "step": state["step"]} if gan_arguments else {}
                    discriminator_steps = bool(gan_arguments) and loss_fn.discriminator_active(state["step"])

                    logs: dict[str, float] = {}
                    for micro, (x, labels) in enumerate(group):
                        noise_source.global_batch = sampler.global_batch_size(state["batch_in_epoch"] + micro)
                        x = to_model_range(x.to(device, non_blocking=True))
                        labels = labels.to(device, non_blocking=True) if conditional else None
                        # Autoencoder (generator) loss.
                        with accelerator.autocast():
                            output = model(x, labels, generator=noise_source)
                            loss, micro_logs = loss_fn(x, output, kl_weight, **step_arguments)
                        accelerator.backward(loss / len(group))
                        # Discriminator loss, on the same batch: real images and detached reconstructions.
                        if discriminator_steps:
                            with accelerator.autocast():
                                d_loss, d_logs = loss_fn.discriminator_step_loss(x, output.reconstruction.detach())
                            accelerator.backward(d_loss / len(group))
                            micro_logs.update(d_logs)
                        for key, value in micro_logs.items():
                            logs[key] = logs.get(key, 0.0) + value / len(group)
                        state["samples_seen"] += len(x) * accelerator.num_processes

                    average_gradients(unwrapped["model"])
                    if discriminator_steps:
                        average_gradients(unwrapped["discriminator"])
                    # Autoencoder step, then discriminator step (its gradients never touched the autoencoder).
                    finite, grad_norm = apply_gradients(optimizer, scaler, cfg.grad_clip, logs["loss"],
                                                        update_scaler=not discriminator_steps)
                    if finite and ema is not None:
                        ema.update(raw_model)
                    if discriminator_steps:
                        apply_gradients(optimizers["discriminator"], scaler, cfg.grad_clip,
                                        logs["d_loss"] if finite else math.nan)
                    if finite:
                        consecutive_nonfinite = 0
                    else:
                        state["skipped_nonfinite_steps"] += 1
                        consecutive_nonfinite += 1
                        log.warning("step %d: non-finite loss or gradient (loss=%s); step skipped",
                                    state["step"] + 1, logs["loss"])
                    state["step"] += 1
                    state["batch_in_epoch"] += len(group)
                    progress.update(1)

                    if consecutive_nonfinite >= cfg.max_nonfinite_steps:
                        last_good = latest_checkpoint(checkpoint_dir)
                        raise TrainingDiverged(
                            f"training stopped at step {state['step']} (epoch {epoch + 1}): the loss or gradient was "
                            f"non-finite for {consecutive_nonfinite} consecutive steps. "
                            + (f"Last good checkpoint: {last_good} (resume with `vaekit train --resume {run_dir}`). "
                               if last_good else "No checkpoint was written yet. ")
                            + "Lower train.lr, set train.grad_clip, or check the data for NaN/inf values."
                        )
                    if finite:
                        for key, value in logs.items():
                            interval[key] = interval.get(key, 0.0) + value
                        interval["grad_norm"] = interval.get("grad_norm", 0.0) + float(grad_norm)
                        interval["count"] = interval.get("count", 0) + 1
                    if state["step"] % cfg.log_every == 0 or state["step"] == total_steps:
                        count = interval.pop("count", 0)
                        interval = mean_over_processes(interval, device)
                        if count and is_main:
                            record = {"step": state["step"], "epoch": epoch + 1,
                                      **{k: v / count for k, v in interval.items()},
                                      "lr": optimizer.param_groups[0]["lr"]}
                            log_file.write(json.dumps(record) + "\n")
                            log_file.flush()
                            progress.set_postfix(loss=f"{record['loss']:.3f}", kl=f"{record['kl']:.2f}")
                            if cfg.tensorboard:
                                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"},
                                                step=state["step"])
                        interval.clear()
                    if state["step"] % cfg.checkpoint_every == 0:
                        save()
                    if any_process(stop_requested.is_set(), device):
                        saved = save()
                        raise TrainingInterrupted(
                            f"stopped at step {state['step']} of {total_steps}; checkpoint {saved}. "
                            f"Resume with: vaekit train --resume {run_dir}"
                        )
                state["epoch"] = epoch + 1
                state["batch_in_epoch"] = 0
                if cfg.snapshot_examples > 0 and is_main:
                    save_snapshot(run_dir, epoch + 1, raw_model, snapshot_x, snapshot_labels)
            save()
    finally:
        progress.close()
        if log_file is not None:
            log_file.close()
        if cfg.tensorboard:
            accelerator.end_training()

    if is_main:
        save_model(ema.shadow if ema is not None else raw_model, run_dir / "model")
        update_metrics(run_dir, "train", {
            "steps": state["step"],
            "epochs": cfg.epochs,
            "train_time_s": state["train_time_s"],
            "samples_per_s": state["samples_seen"] / max(state["train_time_s"], 1e-9),
            "skipped_nonfinite_steps": state["skipped_nonfinite_steps"],
            "skipped_files": [path for path, _ in train_data.skipped],
        })
        if evaluate_at_end:
            evaluate(run_dir, device=str(device))
        if explore:
            from vaekit.explore import explore_run

            explore_run(run_dir, device=str(device))
    accelerator.wait_for_everyone()
    return run_dir
