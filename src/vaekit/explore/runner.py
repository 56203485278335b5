"""``vaekit explore RUN_DIR``: every figure of a trained run, and the HTML report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vaekit.data import ImageData, build_dataset
from vaekit.data.ranges import range_map
from vaekit.explore.card import compression_ratio, layer_table, parameter_count
from vaekit.explore.images import ImageExplorer
from vaekit.explore.latents import encode_dataset
from vaekit.explore.vectors import VectorExplorer
from vaekit.io.atomic import write_json, write_text
from vaekit.io.layout import resolve_model_dir
from vaekit.io.models import load_model
from vaekit.progress import resolve_device
from vaekit.reports import EXPLORER_FILE, MANIFEST, render_run_report
from vaekit.runs import read_metrics, read_run_config, update_metrics

log = logging.getLogger("vaekit")

EXPLORERS = {"vector": VectorExplorer, "spatial": ImageExplorer}
"""The explorer of each latent layout (``model.latent_layout``)."""


def model_card(model, test: ImageData, metrics: dict) -> dict:
    x, labels = test.__getitems__([0])
    x = range_map(test.value_range, model.value_range)(x)
    latent_shape = [model.latent_dim] if model.latent_layout == "vector" else list(model.latent_shape(*x.shape[2:]))
    seconds = metrics.get("train", {}).get("train_time_s")
    return {
        "model": f"{model.registry_name} ({type(model).__name__})",
        "parameters": parameter_count(model),
        "input_shape": " × ".join(map(str, test.image_shape)),
        "input_values": int(np.prod(test.image_shape)),
        "latent_shape": " × ".join(map(str, latent_shape)),
        "latent_values": int(np.prod(latent_shape)),
        "compression_ratio": compression_ratio(test.image_shape, latent_shape),
        "training_time": f"{seconds:.1f} s" if seconds is not None else "not recorded",
        "layers": layer_table(model, x, labels),
    }


def explore_run(run_dir: str | Path, device: str | None = "auto") -> Path:
    """Write every figure of ``run_dir`` into ``run_dir/figures`` and the report ``run_dir/report.html``."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    notes = []
    model_dir = resolve_model_dir(run_dir)
    if model_dir.name != "model":
        notes.append(f"This run has no final model yet (still training, or stopped before the end): the figures "
                     f"show its latest checkpoint, {model_dir.name}. Finish it with `vaekit train --resume {run_dir}`.")
        log.warning("%s has no final model yet; exploring checkpoint %s", run_dir, model_dir.name)
    device = resolve_device(device)
    model = load_model(run_dir, device=device)
    test = build_dataset(config.data, "test")
    if model.kind == "denoiser":
        from vaekit.diffusion.explore import explore_denoiser

        explorer, more_notes, card = explore_denoiser(run_dir, config, model, test, read_metrics(run_dir))
        notes += more_notes
    else:
        to_model_range = range_map(test.value_range, model.value_range)
        stats = encode_dataset(model, test, config.eval.batch_size, device, to_model_range)
        explorer = EXPLORERS[model.latent_layout](run_dir, config, model.cpu(), test, stats, to_model_range)
        explorer.all()
        if explorer.extra_metrics:
            update_metrics(run_dir, "latent", explorer.extra_metrics)
        if not test.has_labels:
            notes.append("The data has no labels: the latent map is uncoloured, interpolation pairs are random, and "
                         "the figures that need classes are left out (listed at the end).")
        card = model_card(model, test, read_metrics(run_dir))
        if model.latent_layout == "vector":  # the interactive explorer, decoding in the page
            from vaekit.serve import fragment
            from vaekit.serve.explorer import Explorer

            payload = Explorer(model, test, config.seed).info(with_decoder=True)
            write_text(run_dir / "figures" / EXPLORER_FILE, fragment(payload))
    write_json(run_dir / MANIFEST, {
        "figures": [vars(f) for f in explorer.figures], "skipped": explorer.skipped, "notes": notes, "card": card,
    })
    return render_run_report(run_dir)
