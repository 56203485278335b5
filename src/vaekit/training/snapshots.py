"""Reconstructions of fixed test images saved at the end of each epoch (the training-progression figure);
for the Stage B denoiser, samples from fixed noise (``model.snapshot``).

``RUN_DIR/snapshots/originals.safetensors`` holds the images, ``epoch-0001.safetensors`` ... their
reconstructions from the posterior mean after that epoch; one small file per epoch, so nothing is
rewritten as a run grows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vaekit.io.atomic import save_tensors

FOLDER = "snapshots"


def _path(run_dir: Path, epoch: int | None) -> Path:
    return Path(run_dir) / FOLDER / ("originals.safetensors" if epoch is None else f"epoch-{epoch:04d}.safetensors")


@torch.no_grad()
def save_snapshot(run_dir: Path, epoch: int, model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None) -> None:
    """x: ``(n, C, H, W)`` on the model's device; labels for a conditional model, else None."""
    if not _path(run_dir, None).is_file():
        save_tensors(_path(run_dir, None), {"images": x.cpu()})
    was_training = model.training
    model.eval()
    shown = model.snapshot(x, labels)
    model.train(was_training)
    save_tensors(_path(run_dir, epoch), {"images": shown.float().cpu()})


def snapshot_epochs(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / FOLDER
    if not (folder / "originals.safetensors").is_file():
        return []
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("epoch-*.safetensors"))


def read_snapshot(run_dir: Path, epoch: int | None) -> torch.Tensor:
    """The original images (``epoch=None``) or their reconstructions after ``epoch``."""
    return load_file(_path(run_dir, epoch))["images"]
