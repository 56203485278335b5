"""Progress bars and device choice for the commands that are not training (eval, explore, encode,
decode, reconstruct, export-latents, calibrate)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable, TypeVar

from vaekit.errors import VaekitError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str | None = None, unit: str = "it") -> Iterable[T]:
    """``items`` with a tqdm bar on stderr, the training bar's kind: shown on a terminal, left out when
    stderr is not one (logs, pipes, CI) and when vaekit's logging is quieter than INFO (``vaekit -q``)."""
    from tqdm.auto import tqdm

    quiet = not logging.getLogger("vaekit").isEnabledFor(logging.INFO)
    return tqdm(items, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                disable=True if quiet else None)


DEVICE_HELP = "torch device: auto (default: CUDA when available, else the CPU), cpu, cuda, cuda:1, ..."


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) is CUDA when available, else the CPU; anything else must name a device this
    machine has. One rule for every command."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise VaekitError(f"unknown device {device!r}: {DEVICE_HELP}") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise VaekitError(f"device {device!r} was asked for, but torch sees no CUDA GPU on this machine "
                              "(use --device cpu, or auto)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise VaekitError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise VaekitError(f"device {device!r} was asked for, but this machine has no MPS device")
    return resolved
