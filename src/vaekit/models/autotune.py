"""Choose the fastest of several interchangeable computations by timing them once per machine and shape.

``models.fastconv`` asks ``Autotuner.choose(key, candidates)`` on the first CPU inference call of each
layer shape class (as cuDNN's ``benchmark`` mode does on a GPU): every candidate runs once untimed
(warm-up: oneDNN primitives, allocations) and is checked against the reference candidate, then all of
them run ``repeats`` times, interleaved round by round so that drift in the machine's speed hits them
alike, and the lowest median wins (ties go to the candidate listed first). The choice is kept in memory
and in one JSON file per machine under vaekit's cache folder (``VAEKIT_CACHE``, else
``$XDG_CACHE_HOME/vaekit``, else ``~/.cache/vaekit``), in ``fastconv/<machine hash>.json``: a machine is
its CPU model string, the instruction-set extensions that change which kernels run (AVX2, AVX-512,
AMX, ...), torch's version and its thread count, so a new torch, another ``torch.set_num_threads`` or a
copied home folder on another CPU times again. A file that cannot be read is ignored with a warning and
rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "sve", "sve2")
"""CPU flags (as /proc/cpuinfo names them) that change which oneDNN or ATen kernels run."""


def cache_dir() -> Path:
    """vaekit's cache folder: ``VAEKIT_CACHE``, else ``$XDG_CACHE_HOME/vaekit`` (``~/.cache/vaekit``); the
    convention ``diffusion.judge.cache_dir`` follows too."""
    if os.environ.get("VAEKIT_CACHE"):
        return Path(os.environ["VAEKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaekit"


@lru_cache(maxsize=None)
def _cpu() -> tuple[str, tuple[str, ...]]:
    """(CPU model string, the ISA_FLAGS it has) from /proc/cpuinfo, else what ``platform`` knows."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "Model name", "CPU part") and model is None:
                    model = value.strip()
                elif name in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), tuple(f for f in ISA_FLAGS if f in flags)


def machine() -> dict:
    """What makes timings on this machine comparable: CPU, its relevant ISA extensions, the kernels torch
    dispatches to, torch's version and thread count."""
    model, flags = _cpu()
    return {"cpu": model, "arch": platform.machine(), "isa": list(flags),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def machine_hash(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def _median_times(candidates: dict[str, Callable], repeats: int, clock: Callable[[], float]) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def relative_difference(out: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest difference relative to the reference's scale (its standard deviation; its largest
    magnitude where that is 0)."""
    scale = reference.double().std().item() if reference.numel() > 1 else 0.0
    scale = scale or reference.abs().max().item() or 1.0
    return (out.double() - reference.double()).abs().max().item() / scale


class Autotuner:
    """Timed choices among candidates, per machine and key, kept in memory and on disk.

    ``folder``: where the per-machine files go (default ``cache_dir() / "fastconv"``, looked up at each
    use); ``clock``: the timer (``time.perf_counter``; tests give a fake one); ``machine``: a function
    describing the machine (``machine``); ``warmup``/``repeats``: untimed and timed runs per candidate.
    ``used`` records the choice of every key asked since it was last cleared (what a benchmark reports).
    """

    def __init__(self, folder: str | Path | None = None, clock: Callable[[], float] = time.perf_counter,
                 machine: Callable[[], dict] = machine, warmup: int = 1, repeats: int = 3):
        self.folder, self.clock, self.machine = folder, clock, machine
        self.warmup, self.repeats = warmup, repeats
        self.memory: dict[Path, dict[str, dict]] = {}
        self.used: dict[str, str] = {}
        self.lock = threading.Lock()
        self._files: dict[tuple[str, int], Path] = {}

    def cache_file(self) -> Path:
        """This machine's file (the description is hashed once per folder and thread count)."""
        folder = Path(self.folder) if self.folder is not None else cache_dir() / "fastconv"
        where = (str(folder), torch.get_num_threads())
        if where not in self._files:
            self._files[where] = folder / f"{machine_hash(self.machine())}.json"
        return self._files[where]

    def _known(self, path: Path) -> dict[str, dict]:
        with self.lock:
            if path not in self.memory:
                self.memory[path] = self._read(path, warn=True)
            return self.memory[path]

    def entries(self) -> dict[str, dict]:
        """Every choice known for this machine: key -> {"path", "seconds", "rejected"}."""
        return dict(self._known(self.cache_file()))

    def choose(self, key: str, candidates: dict[str, Callable[[], torch.Tensor]], tolerance: float) -> str:
        """The fastest candidate for ``key``: from memory, else from this machine's file, else timed now
        (and written). The first candidate is the reference: one whose warm-up output differs from it by
        more than ``tolerance`` of its scale (``relative_difference``) is dropped with a warning; a
        non-finite reference output leaves the choice to a later call (the first candidate runs)."""
        known = self._known(self.cache_file()).get(key)
        if known is not None and known["path"] in candidates:
            self.used[key] = known["path"]
            return known["path"]
        entry = self._measure(key, candidates, tolerance)
        if entry is None:
            return next(iter(candidates))
        path = self.cache_file()
        with self.lock:
            self.memory.setdefault(path, {})[key] = entry
            self._write(path, key, entry)
        self.used[key] = entry["path"]
        return entry["path"]

    def _measure(self, key: str, candidates: dict[str, Callable], tolerance: float) -> dict | None:
        started = time.perf_counter()
        names = list(candidates)
        reference = candidates[names[0]]()
        if not torch.isfinite(reference).all():
            return None
        for _ in range(self.warmup - 1):
            candidates[names[0]]()
        rejected = {}
        for name in names[1:]:
            for _ in range(max(self.warmup, 1)):
                difference = relative_difference(candidates[name](), reference)
            if not difference <= tolerance:
                rejected[name] = difference
                warnings.warn(f"fast path {name!r} differs from {names[0]!r} by {difference:.1e} of the output's "
                              f"scale for {key} (more than rounding allows, {tolerance:.1e}); not used", stacklevel=4)
        del reference
        kept = {name: fn for name, fn in candidates.items() if name not in rejected}
        seconds = _median_times(kept, self.repeats, self.clock)
        best = min(kept, key=lambda name: (seconds[name], names.index(name)))
        log.info("autotuned %s: %s (%s) in %.2f s", key, best,
                 ", ".join(f"{name} {value * 1e3:.1f} ms" for name, value in seconds.items()),
                 time.perf_counter() - started)
        return {"path": best, "seconds": seconds, "rejected": rejected}

    def _read(self, path: Path, warn: bool) -> dict[str, dict]:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as error:
            if warn:
                warnings.warn(f"cannot read the fast-path autotune cache {path} ({error}); timing again", stacklevel=5)
            return {}
        try:
            data = json.loads(text)
            choices = data["choices"]
            if not all(isinstance(entry["path"], str) and isinstance(entry["seconds"], dict)
                       for entry in choices.values()):
                raise TypeError("an entry without path and seconds")
            return dict(choices)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            if warn:
                warnings.warn(f"ignoring the unreadable fast-path autotune cache {path} ({type(error).__name__}: "
                              f"{error}); timing again and rewriting it", stacklevel=5)
            return {}

    def _write(self, path: Path, key: str, entry: dict) -> None:
        """Add ``key`` to the file, keeping what other processes wrote meanwhile; written to a temporary
        file and renamed, so a reader never sees half a file. A cache that cannot be written only warns."""
        choices = self._read(path, warn=False)
        choices[key] = entry
        data = {"machine": self.machine(), "choices": choices}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(handle, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(temporary, path)
        except OSError as error:
            warnings.warn(f"cannot write the fast-path autotune cache {path} ({error}); the choice is kept for "
                          "this process only", stacklevel=5)
