"""Memory for a training run: the validation batch that fits the device, out-of-memory errors recognised,
and the estimated peaks logged when a run of an image autoencoder starts.

The per-image figures are ``models.memory``'s (computed on the meta device, float32, no GPU needed). The
validation batch is what fits ``VALIDATION_HEADROOM`` of the memory the device can still give: the
estimate counts the tensors the model makes, not cuDNN's workspaces, the allocator's rounding or the
metrics computed beside them (SSIM, the high-frequency energy), which the rest of the memory is left for.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from vaekit.errors import VaekitError
from vaekit.models.memory import (reconstruction_bytes_per_image, training_bytes_per_image,
                                  training_state_bytes, inference_bytes)

log = logging.getLogger("vaekit")

GIB = 1024 ** 3
VALIDATION_HEADROOM = 0.8
"""The share of the device's available memory a validation batch's estimated activations may take."""
CPU_VALIDATION_BYTES = 2 * GIB
"""The CPU's budget for a validation batch's activations: the machine's memory is shared with everything
else on it, and on a CPU a bigger batch is no faster."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the device running out of memory: ``torch.cuda.OutOfMemoryError``, or the
    ``RuntimeError`` other backends (and older CUDA paths, cuDNN among them) raise saying so."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def available_bytes(device: torch.device) -> tuple[int, str]:
    """Bytes a validation batch may use on ``device``, and where the figure comes from (for the log).

    On CUDA: the driver's free memory plus what PyTorch's allocator has cached but not handed out (the
    training step's activations, once freed, stay cached, and validation can reuse them)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        available = free + cached
        return int(available * VALIDATION_HEADROOM), (f"{VALIDATION_HEADROOM:.0%} of the {available / GIB:.1f} GiB "
                                                       f"available on {device}")
    return CPU_VALIDATION_BYTES, f"the CPU budget of {CPU_VALIDATION_BYTES / GIB:.0f} GiB"


def validation_bytes_per_image(model: nn.Module, image_shape: tuple[int, int, int],
                               lpips: nn.Module | None = None) -> int:
    """The estimated peak bytes, per image, of validating an image autoencoder on ``(C, H, W)`` images: the
    encode + decode, or LPIPS on the pair with the image and its reconstruction held, whichever is more
    (they run one after the other)."""
    per_image = reconstruction_bytes_per_image(model, image_shape)
    if lpips is not None:
        pair = 2 * torch.Size(image_shape).numel() * 4
        per_image = max(per_image, inference_bytes(lpips, lambda m, x: m(x, x), image_shape) + pair)
    return per_image


def choose_validation_batch(bytes_per_image: int, budget_bytes: int, examples: int) -> int:
    """The most images (at least 1, at most ``examples``) whose activations fit ``budget_bytes``."""
    return max(1, min(examples, budget_bytes // max(bytes_per_image, 1)))


def planned_validation_budget(device_bytes: int, training_state: int, cuda: bool) -> int:
    """The validation budget a run is expected to find at its first validation: on CUDA,
    ``VALIDATION_HEADROOM`` of ``device_bytes`` (a card's free memory before the run) less the training state
    it will hold then (the training activations are freed by then, and PyTorch's allocator lends them back);
    on the CPU, ``CPU_VALIDATION_BYTES``, as ``available_bytes`` gives."""
    if not cuda:
        return CPU_VALIDATION_BYTES
    return max(0, int(VALIDATION_HEADROOM * (device_bytes - training_state)))


def training_estimate(model: nn.Module, image_shape: tuple[int, int, int], batch_size: int, decoder_only: bool,
                      ema: bool) -> tuple[int, int]:
    """(Activation bytes of one training micro-batch of ``batch_size`` images, bytes of the weights,
    gradients, AdamW moments and EMA copy), float32, the loss's own networks (LPIPS, discriminator) left
    out."""
    trained = [p for p in model.parameters() if p.requires_grad]
    per_image = training_bytes_per_image(model, image_shape, decoder_only)
    return per_image * batch_size, training_state_bytes(model, trained, ema)


def log_memory_estimates(model: nn.Module, image_shape: tuple[int, int, int], micro_batch: int, decoder_only: bool,
                         ema: bool, validation_per_image: int, validation_batch: int | None,
                         device: torch.device, mixed_precision: str) -> None:
    """Log the estimated peak memory of training and of validation; warn on CUDA when one exceeds the
    card's total memory (``validation_batch`` None: chosen at the first validation, from what is free then)."""
    activations, state = training_estimate(model, image_shape, micro_batch, decoder_only, ema)
    size = "×".join(str(s) for s in image_shape[1:])
    note = (" (float32; under autocast most activations take half)" if mixed_precision != "no" else "")
    log.info("estimated training memory: %.2f GiB = %.2f GiB of activations for %d image(s) of %s + %.2f GiB of "
             "weights, gradients and optimizer state%s; LPIPS, the discriminator and cuDNN's workspaces come on top",
             (activations + state) / GIB, activations / GIB, micro_batch, size, state / GIB, note)
    shown = validation_batch or 1
    validation = validation_per_image * shown
    log.info("estimated validation memory: %.0f MiB an image (encode + decode, no gradients)%s", validation_per_image
             / 2 ** 20, f", {validation / GIB:.2f} GiB for the batch of {shown}" if validation_batch else
             "; the batch is chosen at the first validation from the memory available then")
    if device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    if activations + state > total:
        log.warning("training needs about %.1f GiB, more than the %.1f GiB of %s: lower train.batch_size (and raise "
                    "train.grad_accumulation to keep the global batch), set model.gradient_checkpointing=true or "
                    "train.mixed_precision=bf16", (activations + state) / GIB, total / GIB, device)
    if validation > total:
        log.warning("validation with a batch of %d needs about %.1f GiB, more than the %.1f GiB of %s: lower "
                    "train.validation_batch_size, or leave it null to choose one that fits",
                    shown, validation / GIB, total / GIB, device)


class ValidationOutOfMemory(VaekitError):
    """Validation ran out of device memory even one image at a time."""
