"""The HTML reports of runs and sweeps, from what is on disk: figures, metrics, config, sweep table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from vaekit.config import to_dict
from vaekit.runs import BEST_DIR, read_metrics, read_run_config
from vaekit.viz.report import Figure, render

REPORT_FILE = "report.html"
SWEEP_TABLE = "sweep.csv"
MANIFEST = "figures/figures.json"
"""What ``vaekit explore`` drew: figures, skipped figures with the reason, notes, the model card."""
EXPLORER_FILE = "explorer.html"
"""In ``figures/``: the interactive explorer (small VAEs), an HTML fragment that decodes in the page."""


def _metric_rows(metrics: dict) -> list[tuple[str, str]]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value)
        rows.append((key, str(value)))
    return rows


def render_run_report(run_dir: str | Path) -> Path:
    """(Re)write ``run_dir/report.html`` from the figures ``explore_run`` drew, the metrics, the config
    and, for a run inside a sweep, the sweep's table; training's warnings (metrics.json) open its notes."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    metrics = read_metrics(run_dir)
    sweep_csv = run_dir.parent / SWEEP_TABLE
    explorer = run_dir / "figures" / EXPLORER_FILE
    return render(
        "report.html", run_dir / REPORT_FILE, [Figure(**f) for f in manifest["figures"]],
        title=f"{run_dir.name}: {config.model.name} on {config.data.name}",
        notes=[*metrics.get("train", {}).get("warnings", []), *start_comparison(run_dir, metrics), *manifest["notes"]],
        card=manifest["card"],
        metrics=_metric_rows({**metrics.get("test", {}), **metrics.get("latent", {})}),
        sweep=read_table(sweep_csv) if sweep_csv.is_file() else None,
        skipped=manifest["skipped"],
        explorer=explorer.read_text() if explorer.is_file() else None,
        config_yaml=yaml.safe_dump(to_dict(config), sort_keys=False),
    )


def start_comparison(run_dir: Path, metrics: dict) -> list[str]:
    """For a fine-tune: one line saying whether its best weights (best/, the ones exported) validated better
    than the weights it started from (``model.init_from``, validated before its first step)."""
    start, best_file = metrics.get("start"), run_dir / BEST_DIR / "best.json"
    if not start or not best_file.is_file():
        return []
    best = json.loads(best_file.read_text())
    name = best["metric"]
    before, after = start["validation"].get(name), best["validation"].get(name)
    if before is None or after is None:
        return []
    improved = after < before if start["lower_is_better"] else after > before
    verdict = "better than" if improved else ("the same as" if after == before else "not better than")
    return [f"Where it started: {start['source']} validated at {name} {before:.4g} before the first step; the best "
            f"weights (step {best['step']}) at {after:.4g}: {verdict} where it started."]


def read_table(path: Path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {"columns": rows[0], "rows": rows[1:]}
