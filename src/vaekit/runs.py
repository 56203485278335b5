"""Run directories: where ``vaekit train`` leaves everything a run produced.

::

    RUN_DIR/config.yaml          resolved config (every default filled in)
    RUN_DIR/model/               final weights: config.json + model.safetensors
    RUN_DIR/best/                the weights with the best validation metric so far (+ best.json)
    RUN_DIR/checkpoints/step-*/  resumable training state
    RUN_DIR/train_log.jsonl      one JSON object per logged interval or validation
    RUN_DIR/metrics.json         {"train": ..., "test": ...}
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from vaekit.config import RunConfig, build_run_config, read_yaml
from vaekit.errors import VaekitError
from vaekit.io.atomic import write_json

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LOG_FILE = "train_log.jsonl"
BEST_DIR = "best"


def create_run_dir(config: RunConfig) -> Path:
    root = Path(config.output_dir)
    if config.run_name:
        run_dir = root / config.run_name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise VaekitError(
                f"run directory {run_dir} already exists; resume it with `vaekit train --resume {run_dir}` "
                "or choose another run_name"
            )
    else:
        stem = f"{config.model.name}-{config.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir, suffix = root / stem, 2
        while run_dir.exists():
            run_dir, suffix = root / f"{stem}-{suffix}", suffix + 1
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def read_run_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VaekitError(f"no such run directory: {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise VaekitError(
            f"{run_dir} is not a vaekit run directory (no {CONFIG_FILE}); pass the folder that `vaekit train` printed"
        )
    return build_run_config(read_yaml(run_dir / CONFIG_FILE))


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(run_dir: str | Path, section: str, values: dict) -> dict:
    metrics = read_metrics(run_dir)
    metrics[section] = values
    write_json(Path(run_dir) / METRICS_FILE, metrics)
    return metrics


def read_log(run_dir: str | Path) -> list[dict]:
    """The records of ``train_log.jsonl``: training intervals (``loss``, ...) and validations
    (``validation``: {metric: value}). A torn last line — a kill while it was written — is left out."""
    path = Path(run_dir) / LOG_FILE
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_log(run_dir: str | Path, step: int, validated: bool = True) -> None:
    """Keep only the records up to ``step`` (a resumed run writes the later ones again); ``validated``
    False: a validation record of ``step`` itself goes too (the checkpoint was written before that
    validation, which the resumed run does again)."""
    from vaekit.io.atomic import write_text

    path = Path(run_dir) / LOG_FILE
    if path.is_file():
        kept = [json.dumps(r) for r in read_log(run_dir)
                if r.get("step", 0) < step or (r.get("step", 0) == step and (validated or "validation" not in r))]
        write_text(path, "".join(line + "\n" for line in kept))


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def format_metrics(metrics: dict) -> str:
    """The metrics of a run as an aligned two-column table, one section after another."""
    lines = []
    for section, values in metrics.items():
        lines.append(f"{section}:")
        width = max((len(k) for k in values), default=0)
        lines.extend(f"  {key:<{width}}  {_format_value(value)}" for key, value in values.items())
    return "\n".join(lines)
