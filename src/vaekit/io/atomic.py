"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A kill at any moment leaves either the old file or the new one, never a torn file. Folders (``write_folder``)
are written into a temporary sibling and renamed into place the same way.
"""

from __future__ import annotations

import json
import os
import shutil
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


def write_folder(path: str | Path, write, keep_others: bool = False) -> Path:
    """Write the folder ``path`` whole or not at all: ``write(tmp)`` fills a temporary sibling ``.NAME-PID``,
    which is renamed into place once complete. A folder already there is first renamed aside to
    ``.NAME-previous`` and removed after (two renames: a kill between them leaves ``.NAME-previous``, which
    ``restore_folder`` puts back, as the next ``write_folder`` does first); a kill before them leaves the folder
    as it was. ``keep_others``: the files of the folder replaced that ``write`` did not write are kept (hard
    links, or copies), as an edit in place would keep them."""
    path = Path(path)
    restore_folder(path)
    tmp = path.parent / f".{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if keep_others and path.is_dir():
            for entry in path.iterdir():
                if not (tmp / entry.name).exists():
                    if entry.is_dir():
                        shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(entry, tmp / entry.name)
        previous = path.parent / f".{path.name}-previous"
        if path.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return path


def restore_folder(path: str | Path) -> None:
    """Undo a ``write_folder`` that a kill interrupted: put the folder it was replacing back where none is, and
    remove half-written temporaries."""
    path = Path(path)
    previous = path.parent / f".{path.name}-previous"
    if previous.is_dir() and not path.exists():
        os.replace(previous, path)
    for unfinished in path.parent.glob(f".{path.name}-[0-9]*"):
        shutil.rmtree(unfinished, ignore_errors=True)


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
