"""The explorer base: where figures go, how they are listed in the report, and the figures every model
kind shares (training progression, loss and validation curves). ``vectors.VectorExplorer`` draws the
small VAEs' figures, ``images.ImageExplorer`` the image autoencoders'."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vaekit.config import RunConfig
from vaekit.data import ImageData
from vaekit.explore.latents import LatentStats
from vaekit.progress import progress
from vaekit.runs import read_log
from vaekit.training.snapshots import read_snapshot, snapshot_epochs
from vaekit.viz import plots
from vaekit.viz.report import Figure


class Explorer:
    """Draws the figures of one run into ``RUN_DIR/figures``; each method adds one figure or says why not."""

    def __init__(self, run_dir: Path, config: RunConfig, model: torch.nn.Module, test: ImageData, stats: LatentStats,
                 to_model_range: Callable[[torch.Tensor], torch.Tensor]):
        self.run_dir, self.config, self.model, self.test, self.stats = run_dir, config, model, test, stats
        self.to_model_range = to_model_range
        self.value_range = model.value_range
        self.options = config.explore
        self.seed = config.seed
        self.figure_dir = run_dir / "figures"
        self.figures: list[Figure] = []
        self.skipped: list[tuple[str, str]] = []
        self.extra_metrics: dict[str, float] = {}

    # helpers
    def _path(self, filename: str) -> Path:
        return self.figure_dir / filename

    def _add(self, name: str, filename: str, title: str, caption: str) -> None:
        self.figures.append(Figure(name, f"figures/{filename}", title, caption))

    def _examples(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, labels = self.test.__getitems__(indices)
        return x, self.model.labels_for(labels)

    def _class_name(self, label: int) -> str:
        return self.test.class_names[label] if self.test.has_labels else ""

    @property
    def _is_autoencoder(self) -> bool:
        return self.model.deterministic  # a declared capability of every autoencoder

    def _progression_epochs(self, epochs: list[int]) -> list[int]:
        """Up to ``explore.progression_rows`` of the snapshot ``epochs``, evenly spread, first and last included."""
        rows = min(self.options.progression_rows, len(epochs))
        return sorted({epochs[round(i)] for i in np.linspace(0, len(epochs) - 1, rows)})

    # figures every model kind has
    def progression(self) -> None:
        epochs = snapshot_epochs(self.run_dir)
        if not epochs:
            self.skipped.append(("training progression",
                                 "training saved no snapshots (train.snapshot_examples=0, or no epoch finished)"))
            return
        picks = self._progression_epochs(epochs)
        images = torch.stack([read_snapshot(self.run_dir, None)] + [read_snapshot(self.run_dir, e) for e in picks])
        plots.labelled_grid(self._path("progression.png"), images.clamp(*self.model.value_range),
                            ["original"] + [f"epoch {e}" for e in picks], "reconstructions during training",
                            value_range=self.model.value_range)
        self._add("progression", "progression.png", "Training progression",
                  "Reconstructions of the same test images at the end of epochs during training (top row: the "
                  "images).")

    def losses(self) -> None:
        records = read_log(self.run_dir)
        training = [r for r in records if "loss" in r]
        if not training:
            self.skipped.append(("loss curves", "the run has no training log"))
            return
        plots.loss_curves(self._path("losses.png"), training)
        self._add("losses", "losses.png", "Loss curves",
                  "Training loss (with the KL weight of that step), reconstruction term and KL, averaged over each "
                  "logging interval.")
        validations = [r for r in records if "validation" in r]
        if validations:
            plots.validation_curves(self._path("validation.png"), validations)
            self._add("validation", "validation.png", "Validation during training",
                      f"Each metric on the fixed held-out subset ({self.config.train.validation_examples} test "
                      "examples) at every validation; the best weights by "
                      f"{self.config.train.best_metric or 'the default metric'} are kept in best/.")

    def figures_to_draw(self) -> tuple:
        raise NotImplementedError

    def all(self) -> None:
        few = len(self.test) < 2
        for draw in progress(self.figures_to_draw(), desc="explore", unit="figure"):
            if few and draw.__name__ in ("interpolations", "neighbours", "latent_maps"):
                self.skipped.append((draw.__name__.replace("_", " "), "it needs at least two test images"))
                continue
            draw()
