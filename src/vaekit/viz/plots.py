"""matplotlib figures (Agg, no display): latent maps, KL per dimension, loss curves, sweep plots."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

FIGSIZE = (6.0, 4.5)
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def scatter_panels(path: str | Path, panels: dict[str, np.ndarray], labels: np.ndarray | None,
                   class_names: Sequence[str]) -> Path:
    """One scatter per panel (title -> ``(N, 2)`` coordinates), points coloured by label."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(FIGSIZE[0] * len(panels) * 0.8, FIGSIZE[1]), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for ax, (title, coords) in zip(axes[0], panels.items()):
        if labels is None or not len(class_names):
            ax.scatter(coords[:, 0], coords[:, 1], s=6, alpha=0.6, color="0.3")
        else:
            for c, name in enumerate(class_names):
                mask = labels == c
                ax.scatter(coords[mask, 0], coords[mask, 1], s=6, alpha=0.7, color=cmap(c % cmap.N), label=name)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    if labels is not None and len(class_names):
        axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def collapse_view(path: str | Path, kl_per_dim: Sequence[float], activity: Sequence[float], threshold: float) -> Path:
    """Posterior collapse at a glance: KL per latent dimension, and the activity Var_x(E[z_u|x]) of each
    dimension against the active-unit threshold (on a log axis); inactive dimensions in grey."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(FIGSIZE[0] * 1.6, FIGSIZE[1]))
    dims = np.arange(len(kl_per_dim))
    colours = ["tab:blue" if a > threshold else "0.7" for a in activity]
    left.bar(dims, kl_per_dim, color=colours)
    left.set_xlabel("latent dimension")
    left.set_ylabel("KL (nats per example)")
    left.set_title("KL per dimension (grey: inactive)")
    right.bar(dims, np.maximum(np.asarray(activity, dtype=float), 1e-8), color=colours)
    right.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"active-unit threshold {threshold:g}")
    right.set_yscale("log")
    right.set_xlabel("latent dimension")
    right.set_ylabel("variance over the data of the posterior mean")
    right.set_title("activity")
    right.legend(frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def loss_curves(path: str | Path, records: list[dict]) -> Path:
    """Total loss and reconstruction against the optimizer step, and the KL beside them when the loss has
    one (a VAE's; not the denoiser's)."""
    plt = _pyplot()
    with_kl = "kl" in records[0]
    fig, axes = plt.subplots(1, 2 if with_kl else 1, figsize=(FIGSIZE[0] * (1.6 if with_kl else 1.0), FIGSIZE[1]),
                             squeeze=False)
    left = axes[0][0]
    steps = [r["step"] for r in records]
    for key in ("loss", "reconstruction"):
        if key in records[0]:
            left.plot(steps, [r[key] for r in records], label=key)
    left.set_xlabel("step")
    left.set_ylabel("nats per example" if with_kl else "loss")
    left.legend(frameon=False)
    if with_kl:
        right = axes[0][1]
        right.plot(steps, [r["kl"] for r in records], color="tab:green", label="KL")
        right.set_xlabel("step")
        right.set_ylabel("KL (nats per example)")
        right.legend(frameon=False)
    fig.suptitle("training losses")
    fig.tight_layout()
    return _save(fig, path)


def spectra(path: str | Path, latents: dict[str, tuple], images: dict[str, tuple]) -> Path:
    """Radially averaged power spectra (frequencies, power), each normalised to unit total power, log scale:
    one solid line per latent space, dashed for the images at the same resolution."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    def share(power):  # of the total; bins without power (the mean-removed DC) left out of the log plot
        share = np.asarray(power / power.sum(), dtype=float)
        return np.where(share > 0, share, np.nan)

    for i, (name, (frequency, power)) in enumerate(latents.items()):
        color = f"C{i}"
        ax.plot(frequency, share(power), color=color, marker="o", markersize=3, label=f"{name} latents")
        image_frequency, image_power = images[name]
        ax.plot(image_frequency, share(image_power), color=color, linestyle="--", alpha=0.6,
                label="images at its resolution")
    ax.set_yscale("log")
    ax.set_xlabel("frequency (cycles per pixel)")
    ax.set_ylabel("share of power")
    ax.legend(frameon=False, fontsize=7)
    ax.set_title("power spectra")
    fig.tight_layout()
    return _save(fig, path)


def lines(path: str | Path, x: Sequence[str], series: dict[str, Sequence[float]], xlabel: str, ylabel: str,
          title: str) -> Path:
    """One line per named series over categorical ``x``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, values in series.items():
        ax.plot(range(len(x)), values, marker="o", markersize=3, label=name)
    ax.set_xticks(range(len(x)), x, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def bars(path: str | Path, names: Sequence[str], values: Sequence[float], xlabel: str, ylabel: str,
         title: str) -> Path:
    """One bar per named value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(FIGSIZE[0], 0.5 * len(names)), FIGSIZE[1]))
    ax.bar(range(len(names)), [float("nan") if v is None else v for v in values], color="tab:blue")
    ax.set_xticks(range(len(names)), names, fontsize=7, rotation=30)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def validation_curves(path: str | Path, records: list[dict]) -> Path:
    """One panel per validation metric against the optimizer step."""
    plt = _pyplot()
    names = list(records[0]["validation"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, name in zip(axes[0], names):
        ax.plot(steps, [r["validation"].get(name, float("nan")) for r in records], marker="o", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    fig.suptitle("validation on held-out examples")
    fig.tight_layout()
    return _save(fig, path)


def metric_against_value(path: str | Path, values: Sequence, metrics: dict[str, Sequence[float]], xlabel: str) -> Path:
    """One panel per metric, plotted against the swept value (categorical x when not numeric)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = list(values) if numeric else list(range(len(values)))
    for ax, (name, ys) in zip(axes[0], metrics.items()):
        ax.plot(x, ys, marker="o")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        if numeric and min(x) > 0 and max(x) / min(x) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(x, [str(v) for v in values], fontsize=7, rotation=20)
    fig.tight_layout()
    return _save(fig, path)


def labelled_scatter(path: str | Path, x: Sequence[float], y: Sequence[float], labels: Sequence[str], xlabel: str,
                     ylabel: str) -> Path:
    """One labelled point per item."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(x, y)
    for xi, yi, label in zip(x, y, labels):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def labelled_grid(path: str | Path, images, row_labels: Sequence[str], title: str,
                  col_labels: Sequence[str] | None = None, value_range: tuple[float, float] = (0.0, 1.0),
                  marked_rows: Sequence[int] = ()) -> Path:
    """An image grid ``(rows, cols, C, H, W)`` with a text label per row (and optionally per column);
    labels of ``marked_rows`` are drawn in red."""
    from vaekit.viz.grids import PAD, image_grid

    plt = _pyplot()
    grid = image_grid(images, value_range=value_range)
    rows, cols = images.shape[:2]
    width, height = grid.size
    fig_w = width / DPI + 1.6
    fig_h = height / DPI + 0.7 + (0.3 if col_labels else 0)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    ax.imshow(np.asarray(grid), interpolation="nearest")
    tile_h, tile_w = (height - PAD) / rows, (width - PAD) / cols
    ax.set_yticks([PAD / 2 + tile_h * (r + 0.5) for r in range(rows)], row_labels, fontsize=8)
    for r in marked_rows:
        ax.get_yticklabels()[r].set_color("tab:red")
    if col_labels:
        ax.set_xticks([PAD / 2 + tile_w * (c + 0.5) for c in range(cols)], col_labels, fontsize=7)
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _panels(count: int, panel_width: float):
    """A figure with ``count`` panels, four to a row."""
    cols = min(count, 4)
    rows = -(-count // cols)
    return _pyplot().subplots(rows, cols, figsize=(panel_width * cols, 2.4 * rows), squeeze=False)


def channel_maps(path: str | Path, latent: np.ndarray, title: str) -> Path:
    """Each latent channel ``(c, h, w)`` of one image as a heat map with its own colour bar."""
    channels = latent.shape[0]
    fig, axes = _panels(channels, 2.6)
    for index, ax in enumerate(axes.flat):
        if index >= channels:
            ax.axis("off")
            continue
        image = ax.imshow(latent[index], cmap="RdBu_r", interpolation="nearest")
        ax.set_title(f"channel {index}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def channel_histograms(path: str | Path, values: np.ndarray, title: str) -> Path:
    """Histogram per channel of ``values`` ``(c, n)`` against the N(0, 1) density."""
    channels = values.shape[0]
    fig, axes = _panels(channels, 2.8)
    grid = np.linspace(-4, 4, 200)
    for index, ax in enumerate(axes.flat):
        if index >= channels:
            ax.axis("off")
            continue
        v = values[index]
        ax.hist(v, bins=60, range=(-4, 4), density=True, color="tab:blue", alpha=0.7)
        ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), color="tab:red", linewidth=1)
        ax.set_title(f"ch {index}: mean {v.mean():+.2f}, std {v.std():.2f}", fontsize=8)
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
