"""What a run will do, worked out before it starts: the automatic settings resolved for its device (mixed
precision, loader workers), the optimizer steps its epochs make on the data it was given, the warm-up, and
(for ``vaekit train --print-config``) the memory the estimates of ``training.memory`` give it.

``build_run`` and ``--print-config`` use the same functions, so the printed plan is the run's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch

from vaekit.config import RunConfig, TrainConfig
from vaekit.data.loading import batches_per_epoch
from vaekit.errors import VaekitError
from vaekit.progress import DEVICE_HELP

AUTO_WORKERS = 4
"""Loader workers of ``train.num_workers: auto`` on a CUDA GPU: what the public SD-VAE fine-tune scripts use
(cccntu/fine-tune-models, Leminhbinh0209/FinetuneVAE-SD); with 256² crops of photographs kept decoded in
memory after the first epoch (data.cache), a few workers keep ahead of the GPU."""
STATED_GPU_GIB = 24
"""The card ``--print-config`` plans for when it is asked for CUDA on a machine without a GPU."""


def uses_cuda(device: str | torch.device | None) -> bool:
    """Whether a run on ``device`` ("auto"/None: a GPU when there is one) trains on a CUDA GPU."""
    if device in (None, "auto"):
        return torch.cuda.is_available()
    try:
        return torch.device(device).type == "cuda"
    except (RuntimeError, TypeError) as err:
        raise VaekitError(f"unknown device {device!r}: {DEVICE_HELP}") from err


def resolve_mixed_precision(setting: str, cuda: bool) -> str:
    """``auto``: bf16 on a CUDA GPU that has it (and on a GPU not present: ``--print-config`` plans for a
    current card), else "no": on the CPU bf16 autocast is slower than float32, and fp16's range (65,504)
    overflows inside SD's decoder."""
    if setting != "auto":
        return setting
    if not cuda:
        return "no"
    return "bf16" if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else "no"


def resolve_num_workers(setting: int | str, cuda: bool) -> int:
    """``auto``: ``AUTO_WORKERS`` on a CUDA GPU (at most the cores but one), 0 elsewhere: on the CPU the
    model's compute takes every core, and without workers batches are read two ahead in a thread."""
    if setting != "auto":
        return int(setting)
    return max(0, min(AUTO_WORKERS, (os.cpu_count() or 1) - 1)) if cuda else 0


def resolve_for_device(config: RunConfig, cuda: bool) -> RunConfig:
    """``config`` with its automatic settings replaced by what they are on this device (the run's saved
    config then says what it ran with)."""
    cfg = config.train
    train = dataclasses.replace(cfg, mixed_precision=resolve_mixed_precision(cfg.mixed_precision, cuda),
                                num_workers=resolve_num_workers(cfg.num_workers, cuda))
    return dataclasses.replace(config, train=train)


def steps_per_epoch(num_examples: int, cfg: TrainConfig, num_processes: int = 1) -> int:
    """Optimizer steps in an epoch of ``num_examples``: its batches of ``train.batch_size`` (a last one too
    small for every process dropped), ``train.grad_accumulation`` to a step, the last group possibly shorter."""
    return math.ceil(batches_per_epoch(num_examples, cfg.batch_size, num_processes) / cfg.grad_accumulation)


def total_steps(cfg: TrainConfig, per_epoch: int) -> int:
    """``train.epochs`` of ``per_epoch`` steps, or ``train.max_steps`` when that comes first."""
    return int(min(cfg.epochs * per_epoch, cfg.max_steps or math.inf))


def warmup_steps(cfg: TrainConfig, steps: int) -> int:
    """The learning-rate warm-up in steps: ``train.lr_warmup_steps``, or ``train.lr_warmup_fraction`` of the
    run's ``steps`` (at least 1 step when the fraction is not 0)."""
    if cfg.lr_warmup_fraction:
        return max(1, round(cfg.lr_warmup_fraction * steps))
    return cfg.lr_warmup_steps


@dataclass
class MemoryPlan:
    """Estimated memory of an image autoencoder's run (``training.memory``'s figures, float32)."""

    training_activations: int
    """Bytes of one micro-batch's activations."""
    training_state: int
    """Bytes of the weights, gradients, AdamW moments and EMA copy."""
    validation_per_image: int
    validation_batch: int
    """The validation batch those figures choose for ``device_bytes``."""
    device_bytes: int
    device: str
    """Where ``device_bytes`` comes from."""


@dataclass
class RunPlan:
    train_examples: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    config: RunConfig
    """The config with its automatic settings resolved for the device."""
    memory: MemoryPlan | None = None
    automatic: tuple[str, ...] = ()
    """The train keys that were ``auto`` before being resolved."""
