"""What a run reports while it trains: ``train_log.jsonl``, the progress bar and TensorBoard.

Training records are means over each logging interval (over processes too) of the step logs, the
gradient norm and the learning rate; validation records are ``{"step", "epoch", "validation": {...}}``.
Only the main process writes; every process takes part in the averaging.

The progress bar is drawn on a terminal only: written to a file or a pipe, a bar is a carriage-return
frame per step, so there (unless ``vaekit -q``) a plain line is logged every ``train.log_every`` steps
instead, as other training tools do.
"""

from __future__ import annotations

import json
import logging
import sys

import torch
from tqdm.auto import tqdm

from vaekit.runs import LOG_FILE
from vaekit.training.distributed import mean_over_processes
from vaekit.training.setup import Run
from vaekit.training.steps import StepResult


log = logging.getLogger("vaekit")


def bar_wanted(enabled: bool) -> bool:
    """A progress bar only where it can be drawn (stderr is a terminal) and vaekit is not quiet."""
    return enabled and sys.stderr.isatty() and log.isEnabledFor(logging.INFO)


class Logbook:
    def __init__(self, run: Run):
        self.run = run
        self.file = open(run.run_dir / LOG_FILE, "a") if run.is_main else None
        self.bar = run.is_main and bar_wanted(run.cfg.progress_bar)
        self.progress = tqdm(total=run.total_steps, initial=run.state.step, desc="train", unit="step",
                             dynamic_ncols=True, disable=not self.bar)
        # off a terminal, a line per logging interval instead of the bar
        self.lines = run.is_main and run.cfg.progress_bar and not self.bar
        self.interval: dict[str, float] = {}
        self.count = 0
        self.postfix: dict[str, str] = {}
        if run.cfg.tensorboard:
            run.accelerator.init_trackers("tensorboard")

    def __enter__(self) -> Logbook:
        return self

    def __exit__(self, *exc) -> None:
        self.progress.close()
        if self.file is not None:
            self.file.close()
        if self.run.cfg.tensorboard:
            self.run.accelerator.end_training()

    def _write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def step(self, result: StepResult) -> None:
        """Count a step; a finite one joins the interval's means."""
        self.progress.update(1)
        if result.finite:
            for key, value in result.logs.items():
                self.interval[key] = self.interval.get(key, 0.0) + value
            self.interval["grad_norm"] = self.interval.get("grad_norm", 0.0) + result.grad_norm
            self.count += 1

    def write_interval(self, epoch: int) -> None:
        """The interval's means as one record (a collective call: every process makes it)."""
        run = self.run
        means = mean_over_processes({k: v / self.count for k, v in self.interval.items()} if self.count else {},
                                    run.device)
        if self.count and run.is_main:
            record = {"step": run.state.step, "epoch": epoch + 1, **means,
                      "lr": run.optimizers["model"].param_groups[0]["lr"]}
            self._write(record)
            self.postfix["loss"] = f"{record['loss']:.3f}"
            if "kl" in record:  # the denoiser's loss has no KL term
                self.postfix["kl"] = f"{record['kl']:.2f}"
            self.progress.set_postfix(self.postfix)
            if self.lines:
                log.info("train step %d/%d: %s", run.state.step, run.total_steps,
                         ", ".join(f"{k} {v}" for k, v in self.postfix.items()))
            if run.cfg.tensorboard:
                run.accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=run.state.step)
        self.interval.clear()
        self.count = 0

    def validation(self, epoch: int, metrics: dict[str, float], images: torch.Tensor, metric: str,
                   start: bool = False) -> None:
        """A validation's metrics; ``images``: ``(2, n, C, H, W)`` originals above reconstructions; ``start``:
        the starting weights of a fine-tune, before its first step."""
        run = self.run
        self._write({"step": run.state.step, "epoch": epoch + 1, "validation": metrics, **({"start": True} if start else {})})
        self.postfix[f"val_{metric}"] = f"{metrics[metric]:.4g}"
        self.progress.set_postfix(self.postfix)
        if run.cfg.tensorboard:
            run.accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=run.state.step)
        if run.cfg.tensorboard and images is not None:
            low, high = run.raw_model.value_range
            grid = ((images.flatten(0, 1) - low) / (high - low)).clamp(0, 1)
            tracker = run.accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_images("validation/reconstructions", grid, global_step=run.state.step, dataformats="NCHW")
