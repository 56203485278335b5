"""``vaekit train --print-config``: the config a new run would use, its automatic settings resolved for the
device, with what follows from the data and the model beside the keys — the optimizer steps its epochs make
on the folder it was given, the warm-up, and for an image autoencoder the estimated memory and the
validation batch those estimates choose. Nothing is trained and no run directory is written; a
``model.init_from`` source is read (downloaded into the Hugging Face cache the first time), as the run would.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import yaml

from vaekit.config import RunConfig, to_dict
from vaekit.data import build_dataset
from vaekit.training.memory import (CPU_VALIDATION_BYTES, GIB, choose_validation_batch, planned_validation_budget,
                                    training_estimate, validation_bytes_per_image)
from vaekit.training.plan import (STATED_GPU_GIB, MemoryPlan, RunPlan, resolve_for_device, steps_per_epoch,
                                  total_steps, uses_cuda, warmup_steps)
from vaekit.training.setup import IMAGE_VALIDATE_EVERY, build_model, new_run_config, resolve_for_data


def device_memory(device: str | None, cuda: bool) -> tuple[int, str]:
    """(Bytes a run on ``device`` may plan with, where the figure comes from): a present GPU's free memory
    now; ``STATED_GPU_GIB`` for CUDA asked for on a machine without a GPU; 0 for the CPU (whose validation
    budget is fixed)."""
    if cuda and torch.cuda.is_available():
        gpu = torch.device("cuda" if device in (None, "auto") else device)
        free, _ = torch.cuda.mem_get_info(gpu)
        return free, f"the {free / GIB:.1f} GiB free on {gpu} now"
    if cuda:
        return STATED_GPU_GIB * GIB, f"a {STATED_GPU_GIB} GiB card, stated: this machine has no GPU"
    return 0, f"the CPU budget of {CPU_VALIDATION_BYTES / GIB:.0f} GiB"


def plan_memory(config: RunConfig, source, image_shape: tuple[int, int, int], validation_examples: int,
                device: str | None, cuda: bool) -> MemoryPlan | None:
    """The memory estimates of an image autoencoder's run (None for the other models): one micro-batch of
    training, and the validation batch chosen as the run will choose it (LPIPS's VGG16 included)."""
    from vaekit.losses.perceptual import make_lpips

    model = build_model(config, source)
    if model.kind != "autoencoder" or model.has_likelihood:
        return None
    cfg = config.train
    activations, state = training_estimate(model, image_shape, cfg.batch_size, cfg.decoder_only, bool(cfg.ema_decay))
    with warnings.catch_warnings():  # lpips builds its VGG16 with torchvision's deprecated pretrained=
        warnings.simplefilter("ignore", UserWarning)
        lpips = make_lpips(pretrained_backbone=False)  # the architecture is all an estimate needs
    per_image = validation_bytes_per_image(model, image_shape, lpips)
    device_bytes, where = device_memory(device, cuda)
    batch = cfg.validation_batch_size or choose_validation_batch(
        per_image, planned_validation_budget(device_bytes, state, cuda), validation_examples)
    return MemoryPlan(activations, state, per_image, batch, device_bytes, where)


def plan_run(config: RunConfig | dict | str | Path | None, device: str | None = "auto") -> RunPlan:
    """What a new run of ``config`` on ``device`` would do (one process), worked out without training."""
    config, source = new_run_config(config)
    cuda = uses_cuda(device)
    automatic = tuple(key for key in ("mixed_precision", "num_workers") if getattr(config.train, key) == "auto")
    config = resolve_for_device(config, cuda)
    train_data = build_dataset(config.data, "train")
    per_epoch = steps_per_epoch(len(train_data), config.train)
    steps = total_steps(config.train, per_epoch)
    validation_examples = min(config.train.validation_examples, len(build_dataset(config.data, "test")))
    memory = plan_memory(resolve_for_data(config, train_data), source, tuple(train_data.image_shape),
                         validation_examples, device, cuda)
    return RunPlan(len(train_data), per_epoch, steps, warmup_steps(config.train, steps), config, memory, automatic)


def _notes(plan: RunPlan) -> dict[str, str]:
    """Comments for keys of the train section: what each resolved to, and why."""
    cfg = plan.config.train
    stopped = " (train.max_steps ends it first)" if plan.total_steps < cfg.epochs * plan.steps_per_epoch else ""
    notes = {"epochs": f"{plan.total_steps:,} optimizer steps{stopped}: {plan.steps_per_epoch:,} an epoch of "
                       f"{plan.train_examples:,} training examples, {cfg.batch_size} × {cfg.grad_accumulation} a step"}
    if cfg.lr_warmup_fraction:
        notes["lr_warmup_fraction"] = f"{plan.warmup_steps:,} warm-up steps"
    for key in plan.automatic:
        notes[key] = "auto, for this device"
    memory = plan.memory
    if memory is not None and cfg.validate_every is None:
        notes["validate_every"] = f"every {IMAGE_VALIDATE_EVERY} steps and at the end"
    if memory is not None and cfg.validation_batch_size is None:
        notes["validation_batch_size"] = (
            f"automatic; by the memory estimates {memory.validation_batch} (about "
            f"{memory.validation_per_image / 2 ** 20:.0f} MiB an image), for {memory.device}")
    return notes


def _memory_header(memory: MemoryPlan, micro_batch: int) -> str:
    return (f"# Estimated memory (float32; under bf16 autocast most activations take half):\n# training "
            f"{(memory.training_activations + memory.training_state) / GIB:.1f} GiB = "
            f"{memory.training_activations / GIB:.1f} GiB of activations for a micro-batch of {micro_batch} + "
            f"{memory.training_state / GIB:.1f} GiB of weights, gradients and optimizer state (LPIPS and a "
            f"discriminator on top);\n# validation {memory.validation_batch} image(s) × "
            f"{memory.validation_per_image / 2 ** 20:.0f} MiB = "
            f"{memory.validation_batch * memory.validation_per_image / GIB:.1f} GiB.\n")


def preview_yaml(config: RunConfig | dict | str | Path | None, device: str | None = "auto") -> str:
    """The YAML ``vaekit train --print-config`` prints: the config as the run would save it, with the
    plan's figures as comments beside the train keys they follow from."""
    plan = plan_run(config, device)
    notes = _notes(plan)
    lines, section = [], None
    for line in yaml.safe_dump(to_dict(plan.config), sort_keys=False).splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":")
        key = line.strip().split(":")[0]
        lines.append(f"{line}  # {notes[key]}" if section == "train" and line.startswith("  ") and key in notes
                     else line)
    header = _memory_header(plan.memory, plan.config.train.batch_size) if plan.memory else ""
    return header + "\n".join(lines) + "\n"

