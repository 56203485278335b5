"""The trainer: set up, then one loop — step, log, validate, checkpoint — then finish.

``setup.build_run`` builds (or restores) everything; ``steps`` holds the optimizer steps, the GAN's
generator-then-discriminator step among them; ``logbook`` reports; this module reads top to bottom.
"""

from __future__ import annotations

import copy
import itertools
import logging
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from vaekit.config import RunConfig
from vaekit.errors import TrainingDiverged, VaekitError
from vaekit.evaluation import evaluate
from vaekit.io.layout import latest_checkpoint
from vaekit.io.models import load_model, save_model, write_latent_scale
from vaekit.models.latent_scale import measure_latent_scale, store_latent_scale
from vaekit.runs import BEST_DIR, update_metrics
from vaekit.training.distributed import any_process
from vaekit.training.logbook import Logbook
from vaekit.training.setup import Run, build_run, owes_validation
from vaekit.training.snapshots import save_snapshot
from vaekit.training.steps import adversarial_step, autoencoder_step, set_learning_rates
from vaekit.training.validation import LOWER_IS_BETTER, better, save_best

log = logging.getLogger("vaekit")


class TrainingInterrupted(VaekitError):
    """The run was stopped by SIGINT/SIGTERM after saving a checkpoint; it can be resumed."""

def train(
    config: RunConfig | dict | str | Path | None = None,
    *,
    resume: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    evaluate_at_end: bool = True,
    explore: bool = True,
    device: str | None = None,
) -> Path:
    """Train a model and return its run directory.

    ``config``: a RunConfig, a nested dict, a YAML path, or None for the defaults (MLP VAE on shapes).
    ``resume``: a run directory to continue from its latest checkpoint (``config`` must then be None);
    ``overrides`` (``["train.epochs=20"]``) may extend it. ``evaluate_at_end`` / ``explore``: evaluate on
    the test split / draw the figures and report. ``device``: "cpu", "cuda", "cuda:1", ... (default: a GPU
    when there is one).
    """
    run = build_run(config, resume, overrides, device)
    cfg = run.cfg
    step_fn = adversarial_step if run.loss_fn.has_discriminator else autoencoder_step
    clock = time.perf_counter()
    with Logbook(run) as logbook, stop_on_signal() as stop_requested:
        if owes_validation(run, run.state):
            clock = validate(run, logbook, run.state.epoch, clock)
        if run.config.model.init_from is not None and run.state.step == 0 and run.total_steps > 0:
            clock = validate_start(run, logbook, clock)
        for epoch in range(run.state.epoch, cfg.epochs):
            if run.finished and run.state.batch_in_epoch == 0:
                break
            batches = run.batches.epoch(epoch, run.state.batch_in_epoch)
            # One optimizer step per group of grad_accumulation micro-batches (groups end with the epoch).
            while not run.finished and (group := list(itertools.islice(batches, cfg.grad_accumulation))):
                set_learning_rates(run)
                result = step_fn(run, group)
                count_step(run, len(group), result.finite)
                logbook.step(result)
                if run.due(cfg.log_every):
                    logbook.write_interval(epoch)
                # Checkpoint first: a validation that fails (out of memory) then loses no steps. A best it
                # finds is written with the next checkpoint (see validate); a resumed run does it again.
                if run.due(cfg.checkpoint_every):
                    clock = save_checkpoint(run, clock)
                if run.due(run.validate_every):
                    clock = validate(run, logbook, epoch, clock)
                if any_process(stop_requested.is_set(), run.device):
                    save_checkpoint(run, clock)
                    raise TrainingInterrupted(f"stopped at step {run.state.step} of {run.total_steps}; checkpoint "
                                              f"{latest_checkpoint(run.checkpoint_dir)}. Resume with: "
                                              f"vaekit train --resume {run.run_dir}")
            if run.finished and run.state.batch_in_epoch < run.batches.batches_per_epoch:
                break  # train.max_steps ended the run inside this epoch
            end_epoch(run, epoch)
        if run.state.last_validation_step != run.state.step:
            clock = validate(run, logbook, run.state.epoch, clock)
        save_checkpoint(run, clock)
    run.batches.close()
    return finish(run, evaluate_at_end, explore)


def count_step(run: Run, micro_batches: int, finite: bool) -> None:
    """Advance the counters; too many non-finite steps in a row stop the run with what to do."""
    state = run.state
    state.step += 1
    state.batch_in_epoch += micro_batches
    state.samples_seen += sum(run.batches.global_batch_size(state.batch_in_epoch - micro_batches + i)
                              for i in range(micro_batches))
    if finite:
        state.consecutive_nonfinite = 0
        return
    state.skipped_nonfinite_steps += 1
    state.consecutive_nonfinite += 1
    log.warning("step %d: non-finite loss or gradient; step skipped", state.step)
    if state.consecutive_nonfinite >= run.cfg.max_nonfinite_steps:
        last_good = latest_checkpoint(run.checkpoint_dir)
        raise TrainingDiverged(
            f"training stopped at step {state.step} (epoch {state.epoch + 1}): the loss or gradient was non-finite "
            f"for {state.consecutive_nonfinite} consecutive steps. "
            + (f"Last good checkpoint: {last_good} (resume with `vaekit train --resume {run.run_dir}`). "
               if last_good else "No checkpoint was written yet. ")
            + "Lower train.lr, set train.grad_clip, or check the data for NaN/inf values.")


def validate(run: Run, logbook: Logbook, epoch: int, clock: float) -> float:
    """Score the model on the fixed held-out subset (main process); keep the best weights. Its time is
    not training time: returns the clock to continue from."""
    run.state.train_time_s += time.perf_counter() - clock
    if run.is_main:
        metrics, images = run.validator(run.saved_model())
        logbook.validation(epoch, metrics, images, run.validator.metric)
        value = metrics[run.validator.metric]
        if better(run.validator.metric, value, run.state.best_value):
            run.state.best_value, run.state.best_step = value, run.state.step
            # Written with the next checkpoint, so best/ on disk always goes with the checkpoint's best_value.
            run.pending_best = ({"step": run.state.step, "metric": run.validator.metric, "value": value,
                                 "validation": metrics}, copy.deepcopy(run.saved_model()).cpu())
    run.state.last_validation_step = run.state.step
    run.accelerator.wait_for_everyone()
    return time.perf_counter()


def validate_start(run: Run, logbook: Logbook, clock: float) -> float:
    """A fine-tune's starting weights (``model.init_from``) scored before its first step, as every later
    validation is: the row they are read against (``"start": true`` in train_log.jsonl, ``start`` in
    metrics.json). Never a candidate for best/: the run exports weights it trained."""
    run.state.train_time_s += time.perf_counter() - clock
    if run.is_main:
        metrics, images = run.validator(run.saved_model())
        logbook.validation(0, metrics, images, run.validator.metric, start=True)
        if run.cfg.validation_batch_size is None and run.validator.bytes_per_image is not None:
            run.validator.batch_size = None  # chosen again after a step, when the optimizer's state holds its memory
        name = run.validator.metric
        update_metrics(run.run_dir, "start", {"metric": name, "lower_is_better": name in LOWER_IS_BETTER,
                                              "source": run.config.model.init_from, "validation": metrics})
    run.accelerator.wait_for_everyone()
    return time.perf_counter()


def save_checkpoint(run: Run, clock: float) -> float:
    """Checkpoint with the training time so far, and the best weights found since the last one; the writes
    count as training time (the clock returned starts before them)."""
    now = time.perf_counter()
    run.state.train_time_s += now - clock
    if run.pending_best is not None:
        save_best(run.run_dir, run.pending_best[1], run.pending_best[0])
        run.pending_best = None
    run.save_checkpoint()
    return now


def end_epoch(run: Run, epoch: int) -> None:
    run.state.epoch, run.state.batch_in_epoch = epoch + 1, 0
    if run.snapshot is not None:
        save_snapshot(run.run_dir, epoch + 1, run.raw_model, *run.snapshot)


def finish(run: Run, evaluate_at_end: bool, explore: bool) -> Path:
    """Measure the latent scale, save the model, record the run; then evaluate and draw its figures. The
    best weights (``best/``) get their own measured scale too: their encoder is not the final one's."""
    if run.is_main:
        model = run.saved_model()
        scale = calibrate(run, model)
        warning = latent_space_warning(run, scale)
        if warning:
            log.warning(warning)
        save_model(model, run.run_dir / "model")
        if scale and (run.run_dir / BEST_DIR).is_dir() and model.channel_statistics:
            model.copy_statistics_to(run.run_dir / BEST_DIR)  # the same frozen encoder: the same statistics
        elif scale and (run.run_dir / BEST_DIR).is_dir():
            best = load_model(run.run_dir / BEST_DIR, device=run.device)
            calibrate(run, best)
            write_latent_scale(run.run_dir / BEST_DIR, best.latent_norm)
        state = run.state
        update_metrics(run.run_dir, "train", {
            "steps": state.step,
            "epochs": run.cfg.epochs,
            "train_time_s": state.train_time_s,
            "samples_per_s": state.samples_seen / max(state.train_time_s, 1e-9),
            "skipped_nonfinite_steps": state.skipped_nonfinite_steps,
            "skipped_files": [name for name, _ in run.train_data.skipped],
            "best_step": state.best_step,
            f"best_{run.validator.metric}": state.best_value,
            **scale,
            **({"warnings": [warning]} if warning else {}),
        })
        if evaluate_at_end:
            evaluate(run.run_dir, device=str(run.device))
        if explore:
            from vaekit.explore import explore_run

            explore_run(run.run_dir, device=str(run.device))
    run.accelerator.wait_for_everyone()
    return run.run_dir


def calibrate(run: Run, model: torch.nn.Module) -> dict:
    """The latent normalisation (``models.latent_scale``: a scaling factor, with a shift or per-channel
    statistics where the model has them) measured on posterior samples of training examples and stored in
    ``model``; what was done, for metrics.json."""

    mode = run.cfg.calibrate_latents
    if model.channel_statistics and mode != "never":
        return calibrate_channels(run, model)
    if not model.scales_latents or mode == "never":
        return {}
    if mode == "auto" and run.encoder_frozen:
        log.info("the encoder was frozen: keeping the source's scaling factor %g", model.config.scaling_factor)
        return {"scaling_factor": model.config.scaling_factor, "scaling_factor_source": model.config.scaling_factor}
    source_factor = model.config.scaling_factor
    generator = torch.Generator(device=run.device).manual_seed(run.config.seed)
    batches = ((run.to_model_range(x.to(run.device)), y) for x, y in run.batches.epoch(0))
    with torch.no_grad():
        measured = measure_latent_scale(model, batches, generator,
                                        with_shift=model.config.shift_factor is not None,
                                        per_channel=model.config.latents_mean is not None,
                                        max_images=run.cfg.calibration_images)
    run.batches.close()
    store_latent_scale(model, measured.norm)
    log.info("latent scaling factor %.5g (shift %s) measured on posterior samples of %d training images",
             measured.norm.scaling_factor, measured.norm.shift_factor, measured.images)
    return {**measured.norm.to_dict(), "calibration_images": measured.images, "scaling_factor_before": source_factor}


def calibrate_channels(run: Run, model: torch.nn.Module) -> dict:
    """A model that normalises its latents inside itself (RAE): their per-channel mean and std measured on
    training examples and stored where its encode applies them, so that it hands a diffusion model latents of
    mean 0 and std 1 per channel (RAE's stage 2 trains on its normalised tokens); what was done, for
    metrics.json."""
    generator = torch.Generator(device=run.device).manual_seed(run.config.seed)
    batches = ((run.to_model_range(x.to(run.device)), y) for x, y in run.batches.epoch(0))
    with torch.no_grad():
        measured = measure_latent_scale(model, batches, generator, per_channel=True,
                                        max_images=run.cfg.calibration_images)
    run.batches.close()
    mean, std = measured.norm.latents_mean, measured.norm.latents_std
    model.store_channel_statistics(torch.tensor(mean), torch.tensor(std))
    log.info("per-channel latent statistics (std %.4g to %.4g) measured on %d training images, stored in the model",
             min(std), max(std), measured.images)
    return {"latent_channel_statistics": "per channel, inside the model", "calibration_images": measured.images}


def latent_space_warning(run: Run, scale: dict) -> str | None:
    """What to tell the user when training changed a pretrained encoder (None otherwise): the latent space
    a diffusion model was trained on is gone with it. Logged, and kept in metrics.json for the report."""
    source = run.config.model.init_from
    if source is None or run.encoder_frozen or run.state.step == 0 or not run.raw_model.scales_latents:
        return None
    if "scaling_factor_before" in scale:
        factor = (f", and its scaling factor is {scale['scaling_factor']:.5g} (the source's was "
                  f"{scale['scaling_factor_before']:.5g})")
    else:
        factor = " (its scaling factor was not measured again: train.calibrate_latents=never)"
    return (f"the encoder of {source} was trained (train.decoder_only: false), so this model's latent space is no "
            f"longer the source's{factor}: a diffusion model trained on the source's latents (for Stable "
            "Diffusion's VAE, Stable Diffusion's U-Net) will not fit this model's. Train the diffusion model on this "
            "model's latents (vaekit export-latents), or fine-tune with train.decoder_only=true to keep the source's.")


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
