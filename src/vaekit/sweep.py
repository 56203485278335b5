"""``vaekit sweep CONFIG key=v1,v2,... [key2=...]``: one run per combination, compared side by side.

A sweep directory holds one run directory per combination, ``sweep.csv`` (one row per run: the swept
values, then test negative ELBO, IWAE bound, reconstruction, KL, active units, MSE and interpolation
smoothness), plots of each metric against the swept value and ``sweep.html``. A YAML config may carry
its own grid in a ``sweep:`` section (``{key: [v1, v2]}``); the command line adds to it.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import yaml

from vaekit.config import build_run_config, merge, parse_overrides, read_yaml
from vaekit.errors import ConfigError, VaekitError
from vaekit.reports import SWEEP_TABLE, read_table, render_run_report
from vaekit.runs import read_metrics
from vaekit.viz import plots
from vaekit.viz.report import Figure, render

log = logging.getLogger("vaekit")

METRICS = ("negative_elbo", "negative_iwae_bound", "reconstruction", "kl", "active_units", "mse", "psnr", "ssim",
           "lpips", "rfid", "codebook_usage", "perplexity", "hf_energy_ratio", "latent_std", "scaling_factor_estimate",
           "compression_ratio",
           "interpolation_smoothness")
"""Columns of sweep.csv; those no run reports (e.g. the image metrics in a sweep of MLP VAEs) are left out."""


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets: ``"[64],[128,64]"`` -> ``["[64]", "[128,64]"]``."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def parse_sweep_args(items: list[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """``key=v1,v2`` items -> (grid of YAML-parsed values, fixed ``key=value`` overrides)."""
    grid: dict[str, list[Any]] = {}
    fixed: list[str] = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"sweep argument {item!r} is not of the form key=v1,v2,...")
        values = split_values(text)
        if len(values) == 1:
            fixed.append(item)
        else:
            grid[key] = [yaml.safe_load(v) for v in values]
    return grid, fixed


def read_sweep_config(path: str | Path | None) -> tuple[dict[str, Any], dict[str, list[Any]] | list[dict[str, Any]]]:
    """A YAML config and its optional ``sweep:`` section, validated as a run config without it. The
    section is a grid (``{key: [v1, v2]}``, every combination) or a list of combinations
    (``[{key1: a, key2: b}, ...]``, for values that go together). A ``diffusability:`` section (the
    budget ``vaekit diffusability`` compares the swept autoencoders with) is not part of a run's config and
    is left out."""
    raw = read_yaml(path) if path is not None else {}
    raw.pop("diffusability", None)
    grid = raw.pop("sweep", None) or {}
    grid_ok = isinstance(grid, dict) and all(isinstance(v, list) and v for v in grid.values())
    list_ok = isinstance(grid, list) and grid and all(isinstance(c, dict) and c for c in grid)
    if not (grid_ok or list_ok):
        raise ConfigError(f"{path}: the sweep section must map dotted keys to non-empty lists of values, "
                          "or list combinations as mappings")
    build_run_config(raw)
    return raw, grid


def _format(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _run_name(combination: dict[str, Any]) -> str:
    name = "_".join(f"{key.split('.')[-1]}={_format(value)}" for key, value in combination.items())
    return re.sub(r"[^A-Za-z0-9=._-]+", "-", name).strip("-")


def sweep(config: str | Path | None, items: list[str], output_dir: str | None = None,
          device: str | None = None, explore: bool = True) -> Path:
    """Train one run per combination of the grid (on ``device``: default a GPU when there is one); returns
    the sweep directory. ``explore``: draw each run's figures and report (``vaekit explore`` draws them later)."""
    from vaekit.training import train
    from vaekit.training.trainer import TrainingInterrupted

    raw, preset = read_sweep_config(config)
    cli_grid, fixed = parse_sweep_args(items)
    if isinstance(preset, list):
        if cli_grid:
            raise ConfigError("this config lists its combinations; give only single-value overrides with it")
        combinations = preset
    else:
        grid = {**preset, **cli_grid}
        combinations = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    if not combinations:
        raise ConfigError("nothing to sweep: give at least one key=v1,v2,... (or a config with a sweep: section)")
    swept = list(dict.fromkeys(key for combination in combinations for key in combination))
    base = merge(raw, parse_overrides(fixed))
    root = Path(output_dir or base.get("output_dir", "runs"))
    sweep_dir = root / f"sweep-{'-'.join(k.split('.')[-1] for k in swept)}-{time.strftime('%Y%m%d-%H%M%S')}"
    configs = []
    for combination in combinations:  # validate every combination before training any
        nested = parse_overrides([f"{k}={_format(v)}" for k, v in combination.items()])
        configs.append(build_run_config(merge(merge(base, nested),
                                              {"output_dir": str(sweep_dir), "run_name": _run_name(combination)})))
    results, runs = [], []
    for i, (combination, run_config) in enumerate(zip(combinations, configs), 1):
        log.info("sweep run %d of %d: %s", i, len(configs), run_config.run_name)
        try:
            run_dir = train(run_config, device=device, explore=explore)
        except TrainingInterrupted:  # Ctrl-C or SIGTERM stops the sweep, not just its current run
            log.warning("sweep stopped at run %d of %d (%s); the runs before it are in %s", i, len(configs),
                        run_config.run_name, sweep_dir)
            raise
        except VaekitError as err:  # one failed run (e.g. missing LPIPS weights) does not end the sweep
            log.warning("sweep run %s failed: %s", run_config.run_name, err)
            results.append((combination, {"error": str(err)}))
            continue
        metrics = read_metrics(run_dir)
        results.append((combination, {**metrics.get("test", {}), **metrics.get("latent", {})}))
        runs.append(run_dir)
    reported = [m for m in METRICS if any(isinstance(values.get(m), (int, float)) for _, values in results)]
    failed = any("error" in values for _, values in results)
    columns = swept + reported + (["error"] if failed else [])
    rows = []
    for combination, values in results:
        row = [_format(combination[key]) if key in combination else "" for key in swept]
        row += [values[m] if isinstance(values.get(m), (int, float)) else math.nan for m in reported]
        rows.append(row + ([values.get("error", "")] if failed else []))
    with open(sweep_dir / SWEEP_TABLE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    for run_dir in runs if explore else []:  # each run's report now carries the sweep table
        render_run_report(run_dir)
    return write_sweep_report(sweep_dir, swept, [c for c, _ in results], runs, rows, reported)


def write_sweep_report(sweep_dir: Path, swept: list[str], combinations: list[dict], runs: list[Path], rows: list,
                       reported: list[str]) -> Path:
    if len(swept) == 1:
        x_values, x_label = [c[swept[0]] for c in combinations], swept[0]
    else:
        x_values = [", ".join(_format(v) for v in c.values()) for c in combinations]
        x_label = ", ".join(swept)
    offset = len(swept)
    series = {m: [row[offset + i] for row in rows] for i, m in enumerate(reported)
              if all(math.isfinite(row[offset + i]) for row in rows)}
    figures = []
    if series:
        plots.metric_against_value(sweep_dir / "sweep_metrics.png", x_values, series, x_label)
        figures.append(Figure("metrics", "sweep_metrics.png", "Metrics against the swept value",
                              "Test metrics of each run (nats per example where a likelihood; lower is better except "
                              "active units, smoothness, PSNR and SSIM)."))
    ratios = series.get("compression_ratio")
    if ratios and len(set(ratios)) > 1:
        quality = {m: series[m] for m in ("psnr", "ssim", "lpips") if m in series}
        if quality:
            plots.metric_against_value(sweep_dir / "sweep_compression.png", ratios, quality, "compression ratio")
            figures.append(Figure("compression", "sweep_compression.png", "Quality against compression",
                                  "Reconstruction quality of each run against its compression ratio "
                                  "(input values per latent value)."))
    for run_dir in runs:
        for name, what in (("reconstructions", "reconstructions"), ("samples", "prior samples")):
            if (run_dir / "figures" / f"{name}.png").is_file():
                figures.append(Figure(f"{run_dir.name}-{name}", f"{run_dir.name}/figures/{name}.png",
                                      f"{run_dir.name}: {what}", f"From the run's report, {run_dir.name}/report.html."))
    return render("sweep.html", sweep_dir / "sweep.html", figures, title=f"sweep over {', '.join(swept)}",
                  table=read_table(sweep_dir / SWEEP_TABLE), runs=[r.name for r in runs])
