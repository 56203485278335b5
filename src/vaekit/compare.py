"""``vaekit compare A B C ... --data DIR -o OUT``: the leaderboard of image autoencoders on one folder. Every
model is scored by ``evaluate_model`` on the same images at the same resolution, and the page shows the
same images decoded by each, whole and zoomed, side by side, with quality against compression.

Written to OUT: ``compare.csv`` (one row a model, the columns of ``COLUMNS``), ``compare.json`` (every
metric of every model), ``compare.html`` (the table, the image grids and the plot) and the figures.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from vaekit.data.folder import whole_folder
from vaekit.errors import VaekitError
from vaekit.evaluation import evaluate_model
from vaekit.io.atomic import write_json
from vaekit.io.layout import display_name
from vaekit.io.models import load_model
from vaekit.models.memory import reconstruct_mode
from vaekit.progress import resolve_device
from vaekit.viz import plots
from vaekit.viz.report import Figure, render, table_cell

COLUMNS = ("model", "latent_shape", "compression_ratio", "psnr", "ssim", "lpips", "rfid", "latent_hf_fraction",
           "equivariance_mse_scale_0.5", "equivariance_mse_rotate_90", "encode_s_per_image", "decode_s_per_image")
SHOWN = 4
"""Images shown decoded by every model (the folder's first, in its sorted order)."""


def _zoomed(images: torch.Tensor) -> torch.Tensor:
    """The centre quarter of each image's side, where detail is judged (shown larger by the grid)."""
    side = images.shape[-1]
    start, crop = 3 * side // 8, max(side // 4, 1)
    return images[..., start:start + crop, start:start + crop]


def compare_models(sources: list[str], data: str | Path, output: str | Path, resolution: int = 256,
                   batch_size: int = 8, device: str | None = "auto", seed: int = 0) -> Path:
    """Score every model of ``sources`` on the folder ``data``; returns the page (``compare.html``)."""
    if not sources:
        raise VaekitError("give the autoencoders to compare")
    device = resolve_device(device)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    dataset = whole_folder(data, resolution, cache=True)  # every model reads the same files: decode each once
    shown = dataset.__getitems__(list(range(min(SHOWN, len(dataset)))))[0] * 2 - 1
    rows, decoded, taken = [], {}, set()
    for source in sources:
        model = load_model(source, device=device)
        name = display_name(source, taken)
        metrics = evaluate_model(source, data, resolution, batch_size, device, seed, model=model, dataset=dataset)
        rows.append({**metrics, "model": name, "source": str(source)})
        with torch.no_grad():
            decoded[name] = reconstruct_mode(model, shown.to(device)).float().cpu()
    return _write(out, rows, shown, decoded, data, resolution)


def _write(out: Path, rows: list[dict], shown: torch.Tensor, decoded: dict[str, torch.Tensor], data,
           resolution: int) -> Path:
    rows = sorted(rows, key=lambda row: -row["psnr"])
    grids = torch.stack([shown, *(decoded[row["model"]] for row in rows)])
    table = [[table_cell(row.get(column)) for column in COLUMNS] for row in rows]
    with open(out / "compare.csv", "w", newline="") as f:
        csv.writer(f).writerows([COLUMNS, *table])
    write_json(out / "compare.json", {"data": str(data), "resolution": resolution, "models": rows})
    names = ["original", *(row["model"] for row in rows)]
    plots.labelled_grid(out / "decoded.png", grids, names, "the same images decoded by each", value_range=(-1.0, 1.0))
    plots.labelled_grid(out / "zoomed.png", _zoomed(grids), names, "the centre of each, zoomed",
                        value_range=(-1.0, 1.0))
    plots.labelled_scatter(out / "quality.png", [row["compression_ratio"] for row in rows],
                           [row["psnr"] for row in rows], [row["model"] for row in rows],
                           xlabel="compression ratio (pixel values per latent value)", ylabel="PSNR (dB)")
    figures = [Figure("decoded", "decoded.png", "Decoded", "The first images of the folder, decoded by each model."),
               Figure("zoomed", "zoomed.png", "Zoomed", "The centre of the same images, enlarged."),
               Figure("quality", "quality.png", "Quality against compression",
                      "Mean PSNR over the folder against how many pixel values each latent value stands for.")]
    lead = (f"{len(rows)} autoencoders on the {rows[0]['num_examples']} images of {data} at {resolution}², "
            "sorted by PSNR (the mean over images); one measurement each, no seeds involved")
    return render("sweep.html", out / "compare.html", figures, title=f"compare: {len(rows)} autoencoders",
                  table={"columns": list(COLUMNS), "rows": table}, runs=[], lead=lead, extra=None)
