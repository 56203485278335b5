"""One optimizer step, written out: ``autoencoder_step`` for losses of the model alone (the ELBO, or
pixel + LPIPS + KL without a discriminator), ``adversarial_step`` for LDM's two-network step.

A step takes ``train.grad_accumulation`` micro-batches; each backward pass is scaled by 1/count, so
the accumulated gradient is that of their mean. A non-finite loss or gradient on any process skips
the step on every process (the processes agree before anyone steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vaekit.losses.lpips_gan import target_of
from vaekit.losses.schedules import learning_rate_factor, linear_warmup
from vaekit.training.codebook import CodebookUpdate
from vaekit.training.distributed import any_process, average_gradients, mean_tensors
from vaekit.training.setup import Run


@dataclass
class StepResult:
    logs: dict[str, float]
    """Means over the step's micro-batches (this process's share)."""
    finite: bool
    grad_norm: float


def set_learning_rates(run: Run) -> None:
    """The scheduled learning rate of this step, for every optimizer."""
    cfg = run.cfg
    factor = learning_rate_factor(run.state.step, run.total_steps, run.warmup_steps, cfg.lr_schedule)
    for name, optimizer in run.optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = run.base_lrs[name] * factor


def kl_weight(run: Run) -> float:
    return run.loss_fn.beta * linear_warmup(run.state.step, run.cfg.kl_warmup_steps)


def apply_gradients(optimizer: torch.optim.Optimizer, run: Run, loss_value: float,
                    update_scaler: bool = True) -> tuple[bool, float]:
    """Unscale (fp16), clip, step when the loss and gradient are finite on every process, zero the
    gradients. Returns (finite, gradient norm). With two optimizers on one batch, fp16's loss scaler is
    updated once, after the last of them (``update_scaler``)."""
    scaler = run.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, run.cfg.grad_clip or math.inf)
    # fp16's scaler skips overflowing gradients itself (and lowers its scale); elsewhere a non-finite
    # gradient is ours to skip.
    finite = math.isfinite(loss_value) and (scaler is not None or bool(torch.isfinite(grad_norm)))
    finite = not any_process(not finite, run.device)
    if scaler is not None:
        if finite:
            scaler.step(optimizer)
        if update_scaler:
            scaler.update()
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite, float(grad_norm)


def _add_means(logs: dict[str, float], micro_logs: dict[str, float], count: int) -> None:
    for key, value in micro_logs.items():
        logs[key] = logs.get(key, 0.0) + value / count


def _update_model(run: Run, logs: dict[str, float], codebook: CodebookUpdate,
                  update_scaler: bool = True) -> tuple[bool, float]:
    """The model's optimizer step (with the loss's own parameters), a VQ codebook's own update, then the EMA."""
    average_gradients(run.loss_fn.generator_parameters())  # outside the DDP wrapper: averaged here
    finite, grad_norm = apply_gradients(run.optimizers["model"], run, logs["loss"], update_scaler)
    if codebook.active:
        logs["codes_restarted"] = float(codebook.apply(finite, run.noise))
    if finite and run.ema is not None:
        run.ema.update(run.raw_model)
    return finite, grad_norm


def forward_options(run: Run, x: torch.Tensor) -> dict:
    """The model's forward arguments for a training batch: the noise source, and the latent transform of a
    latent regulariser (EQ-VAE, scale equivariance) when the loss draws one for this batch."""
    options = {"generator": run.noise_source}
    draw = getattr(run.loss_fn, "draw_transform", None)
    transform = draw(x, run.noise, run.raw_model.downsampling_factor) if draw is not None else None
    if transform is not None:
        options["transform"] = transform
    return options


def loss_options(run: Run) -> dict:
    """Extra arguments of a loss with an adaptive weight outside the adversarial step (VA-VAE's alignment):
    the average over processes its gradient norms take."""
    return {"gradient_mean": mean_tensors} if getattr(run.loss_fn, "alignment", None) is not None else {}


def autoencoder_step(run: Run, group: list) -> StepResult:
    """One step of the model — and of the loss's own parameters, e.g. LDM's learned log-variance."""
    weight = kl_weight(run)
    logs: dict[str, float] = {}
    codebook = CodebookUpdate(run.raw_model, run.encoder_frozen)
    for micro, batch in enumerate(group):
        x, labels = run.micro_batch(micro, batch)
        with run.accelerator.autocast():
            output = run.model(x, labels, **forward_options(run, x))
            loss, micro_logs = run.loss_fn(x, output, weight, **loss_options(run))
        run.accelerator.backward(loss / len(group))
        codebook.add(output)
        _add_means(logs, micro_logs, len(group))
    finite, grad_norm = _update_model(run, logs, codebook)
    return StepResult(logs, finite, grad_norm)


def adversarial_step(run: Run, group: list) -> StepResult:
    """LDM's step: the autoencoder (generator) with the adversarial term, then — from ``disc_start`` on —
    the discriminator, with its own optimizer, on the same batch: real images against *detached*
    reconstructions. The discriminator is frozen while the generator's loss runs, and its own loss sees
    no autoencoder graph, so neither network's gradients reach the other."""
    step, weight = run.state.step, kl_weight(run)
    discriminator_on = False  # whether any micro-batch ran the discriminator (too small ones do not)
    last_layer = run.loss_fn.last_layer(run.raw_model)
    logs: dict[str, float] = {}
    codebook = CodebookUpdate(run.raw_model, run.encoder_frozen)
    for micro, batch in enumerate(group):
        x, labels = run.micro_batch(micro, batch)
        with run.accelerator.autocast():
            output = run.model(x, labels, **forward_options(run, x))
            loss, micro_logs = run.loss_fn(x, output, weight, step=step, last_layer=last_layer,
                                           gradient_mean=mean_tensors)
        run.accelerator.backward(loss / len(group))
        codebook.add(output)
        if run.loss_fn.discriminates(step, output.reconstruction):
            discriminator_on = True
            with run.accelerator.autocast():
                d_loss, d_logs = run.loss_fn.discriminator_step_loss(target_of(output, x),
                                                                     output.reconstruction.detach())
            run.accelerator.backward(d_loss / len(group))
            micro_logs.update(d_logs)
        _add_means(logs, micro_logs, len(group))

    # 1. The autoencoder. 2. The discriminator (its gradients never touched the autoencoder).
    finite, grad_norm = _update_model(run, logs, codebook, update_scaler=not discriminator_on)
    if discriminator_on:
        average_gradients(list(run.loss_fn.discriminator.parameters()))
        apply_gradients(run.optimizers["discriminator"], run, logs["d_loss"] if finite else math.nan)
    return StepResult(logs, finite, grad_norm)
