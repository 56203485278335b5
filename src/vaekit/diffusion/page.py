"""The diffusability report's page and tables: ``diffusability.csv``, ``configurations.csv`` (one row per
configuration when some were trained with several seeds), ``diffusability.json`` and ``diffusability.html``,
each opening with the verdict."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from vaekit.diffusion.judge import ACCURACY_BAR, Judge
from vaekit.diffusion.verdict import SIGNALS, arbiter_of, configurations, track_record, verdict
from vaekit.io.atomic import write_json
from vaekit.viz import plots
from vaekit.viz.report import Figure, render, table_cell

TABLE, JSON_FILE, PAGE = "diffusability.csv", "diffusability.json", "diffusability.html"
CONFIGURATIONS_TABLE = "configurations.csv"
"""With several seeds per configuration (a sweep): one row per configuration, means over its seeds."""


COLUMNS = ("vae", "compression_ratio", "psnr", "ssim", "lpips", "scaling_factor", "latent_std",
           "latent_channel_std_range", "latent_hf_fraction",
           "image_hf_fraction", "reconstruction_mse", "equivariance_mse_scale_0.5", "equivariance_mse_rotate_90",
           "interpolation_fd", "latent_noise_psnr_drop", "eps_mse", "eps_mse_spread",
           "sample_fd_dinov2", "floor_sample_fd_dinov2", "sample_kid_dinov2", "sample_fid", "floor_sample_fid",
           "sample_kid", "sample_classifier_fd", "floor_sample_classifier_fd", "sample_classifier_fd_spread",
           "sample_classifier_kid", "sample_precision", "sample_recall", "sample_class_accuracy")
"""The table's columns: each FD with its real-vs-real floor (``floor_``: two disjoint real sets of the
samples' size), what a perfect generator would score."""


def _no_arbiter_reason(rows: list[dict], judge: Judge) -> str:
    """Why no judge scored every row: the pretrained judges that could not be had, and the labels."""
    missing = "; ".join(f"{name}: {why}" for name, why in judge.unavailable.items()) or "not asked for"
    if rows[0].get("sample_classifier_fd") is None:
        return f"the images are unlabelled (no class sub-folders) and no pretrained judge could be had ({missing})"
    return "the arbiter's scores are missing"


def seed_free_name(name: str) -> str:
    """A swept autoencoder's name without its seed: the configuration its seeds share ("base" when the seed
    was all that changed)."""
    return re.sub(r"_?seed=\d+", "", name).strip("_") or "base"


def _track_record_table(rows: list[dict], refused: dict[str, str]) -> dict | None:
    """The meta-study's table (four or more configurations, an arbiter not refused): each cheap signal's rank
    correlation with the arbiter over the configurations, with its bootstrap interval."""
    arbiter = arbiter_of(rows, refused)
    if arbiter is None or len({seed_free_name(row["vae"]) for row in rows}) < 4:
        return None
    return track_record(rows, lambda row: seed_free_name(row["vae"]), arbiter)


def _track_record_extra(record: dict) -> dict:
    """The page's meta-study table: each signal's ρ over every configuration, then within each downsampling
    factor that has a record of its own (a signal that only tells one factor from another shows it there)."""
    within = record.get("within_factor") or {}
    caption = (f"Spearman's ρ of each signal (oriented: better first) with the arbiter over "
               f"{len(record['groups'])} configurations (means over their seeds), with a 90 % bootstrap interval "
               "over configurations")
    caption += "".join(f"; within f = {f}: its {len(w['groups'])} configurations alone" for f, w in within.items())

    def cell(r: dict | None) -> str:
        return "n/a" if r is None else f"{r['rho']:.2f} ({r['low']:.2f} to {r['high']:.2f})"

    rows = [[name, f"{r['rho']:.2f}", f"{r['low']:.2f}", f"{r['high']:.2f}",
             *(cell(w["signals"].get(name)) for w in within.values()), SIGNALS[name][1]]
            for name, r in sorted(record["signals"].items(), key=lambda item: -item[1]["rho"])]
    return {"title": f"Which cheap signals predict {record['arbiter']}", "caption": caption + ".",
            "columns": ["signal", "rho", "low", "high", *(f"within f = {f}" for f in within), "what it is"],
            "rows": rows}


def _write_table(path: Path, rows: list[dict]) -> list[list[str]]:
    table = [[table_cell(row.get(c)) for c in COLUMNS] for row in rows]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(table)
    return table


def write_report(out: Path, rows: list[dict], spectra: dict, budget, judge: Judge) -> Path:
    """The tables, the JSON and the page of a comparison of ``rows`` under ``budget``; returns the page."""
    grouped = configurations(rows, lambda row: seed_free_name(row["vae"]))
    refused = judge.refused()
    line = verdict(grouped or rows, _no_arbiter_reason(rows, judge), refused,
                   {"data": budget.data, "resolution": budget.resolution})
    record = _track_record_table(rows, refused)
    judged = {"lines": judge.describe(), "decided_by": arbiter_of(grouped or rows, refused), "refused": refused,
              "accuracy_bar": ACCURACY_BAR,
              "classifier_held_out_accuracy": judge.classifier.held_out_accuracy if judge.classifier else None}
    write_json(out / JSON_FILE, {"verdict": line, "judge": judged, "budget": {**vars(budget), "seeds": list(budget.seeds)},
                                 "rows": rows, "configurations": grouped, "track_record": record})
    table = _write_table(out / TABLE, rows)
    if grouped is not None:  # the page shows the configurations, each over its autoencoders' seeds
        table = _write_table(out / CONFIGURATIONS_TABLE, grouped)
    plots.spectra(out / "spectra.png", {name: latent for name, (latent, _) in spectra.items()},
                  {name: image for name, (_, image) in spectra.items()})
    plots.lines(out / "eps_by_timestep.png", [f"{lo}" for lo, _ in rows[0]["timestep_buckets"]],
                {row["vae"]: row["eps_mse_by_timestep"] for row in rows}, xlabel="timestep bucket (start)",
                ylabel="held-out ε-MSE", title="denoising error by timestep")
    figures = [Figure("spectra", "spectra.png", "Power spectra",
                      "Radially averaged power spectrum of each autoencoder's scaled latents (solid) and of the "
                      "held-out images averaged down to the latents' resolution (dashed), each normalised to unit "
                      "total power: latents with relatively more power at high frequency are harder to diffuse."),
               Figure("eps", "eps_by_timestep.png", "Held-out ε-MSE per timestep",
                      f"The same denoiser ({budget.unet}, {budget.steps} steps, batch {budget.batch_size}) on each "
                      f"autoencoder's latents, mean over seeds {budget.seeds}.")]
    figures += [Figure(f"samples-{row['vae']}", f"samples-{row['vae']}.png", f"Samples: {row['vae']}",
                       "16 of the samples (50 DDIM steps, seed 0) of the first seed's denoiser, decoded by the "
                       "autoencoder.")
                for row in rows]
    line += " — " + "; ".join(judge.describe())
    title = f"diffusability: {len(rows)} autoencoders, {budget.steps} denoiser steps × {len(budget.seeds)} seeds"
    if grouped is not None:
        title += f"; the table: {len(grouped)} configurations, means over their autoencoders"
    extra = None
    if record is not None:
        extra = _track_record_extra(record)
    decided = judged["decided_by"]
    title += f"; decided by {decided}" if decided else "; no judge decided"
    return render("sweep.html", out / PAGE, figures, title=title,
                  table={"columns": list(COLUMNS), "rows": table}, runs=[], lead=line, extra=extra)
