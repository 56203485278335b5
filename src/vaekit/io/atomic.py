"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A kill at any moment leaves either the old file or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic(Path(path), write)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as one safetensors file, atomically. safetensors refuses non-contiguous tensors
    and tensors that share storage (tied weights, views of one buffer): those, and only those, are
    copied, so saving a state dict does not double its memory."""
    plain, storages = {}, set()
    for key, t in tensors.items():
        t = t.detach()
        storage = t.untyped_storage().data_ptr()
        if storage in storages:
            t = t.clone(memory_format=torch.contiguous_format)
        elif not t.is_contiguous():
            t = t.contiguous()
        storages.add(storage)
        plain[key] = t
    _atomic(Path(path), lambda tmp: save_file(plain, tmp, metadata=metadata))
