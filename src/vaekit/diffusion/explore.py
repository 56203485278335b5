"""The figures and report of a Stage B run: samples decoded through the latents' VAE, samples over
training (from the same noise each epoch), the loss and validation curves, and the held-out ε-MSE per
timestep bucket."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from vaekit.diffusion.sampling import decode_latents, load_vae_for, sample_latents
from vaekit.errors import VaekitError
from vaekit.explore.base import Explorer
from vaekit.explore.card import layer_table, parameter_count
from vaekit.training.snapshots import read_snapshot, snapshot_epochs
from vaekit.viz import plots
from vaekit.viz.grids import save_grid, square_grid

log = logging.getLogger("vaekit")


class DenoiserExplorer(Explorer):
    """Figures of a denoiser; ``vae`` (None when it cannot be loaded) decodes latents for display."""

    def __init__(self, run_dir: Path, config, model, test, vae, manifest: dict, metrics: dict):
        super().__init__(run_dir, config, model, test, None, lambda x: x)
        self.vae, self.manifest, self.metrics = vae, manifest, metrics

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, latents, self.manifest)

    def samples(self) -> None:
        if self.vae is None:
            self.skipped.append(("samples", "the VAE that encoded the latents could not be loaded (see the notes)"))
            return
        latents, _ = sample_latents(self.model, self.options.num_examples, steps=50, seed=self.seed)
        save_grid(self._path("samples.png"), square_grid(self._decode(latents)), value_range=(-1.0, 1.0))
        self._add("samples", "samples.png", "Samples",
                  f"{self.options.num_examples} samples of the final (EMA) denoiser, 50 DDIM steps from seeded noise, "
                  "decoded through the VAE that encoded the training latents"
                  + (" (classes in turn)." if self.model.conditional else "."))

    def progression(self) -> None:
        epochs = snapshot_epochs(self.run_dir)
        if not epochs or self.vae is None:
            self.skipped.append(("samples during training", "no snapshots were saved (train.snapshot_examples=0)"
                                 if not epochs else "the VAE could not be loaded"))
            return
        picks = self._progression_epochs(epochs)
        rows = [self._decode(read_snapshot(self.run_dir, None))] + [self._decode(read_snapshot(self.run_dir, e))
                                                                    for e in picks]
        plots.labelled_grid(self._path("progression.png"), torch.stack(rows), ["held-out"] + [f"epoch {e}" for e in picks],
                            "samples during training", value_range=(-1.0, 1.0))
        self._add("progression", "progression.png", "Samples during training",
                  "Top row: held-out images (their latents decoded). Below: samples from the same noise after each "
                  "shown epoch (20 DDIM steps), decoded through the VAE.")

    def losses(self) -> None:
        super().losses()
        for figure in self.figures:
            if figure.name == "losses":
                figure.caption = ("The denoising loss (the MSE of the prediction against its target, ε or v), averaged "
                                  "over each logging interval.")

    def timestep_errors(self) -> None:
        test = self.metrics.get("test", {})
        if "eps_mse_by_timestep" not in test:
            self.skipped.append(("ε-MSE per timestep", "the run has no test metrics (vaekit eval RUN_DIR)"))
            return
        buckets = [f"{lo}–{hi}" for lo, hi in test["timestep_buckets"]]
        plots.bars(self._path("eps_mse_by_timestep.png"), buckets, test["eps_mse_by_timestep"],
                   xlabel="timestep t", ylabel="held-out ε-MSE", title="denoising error by timestep")
        self._add("eps_mse_by_timestep", "eps_mse_by_timestep.png", "Held-out ε-MSE per timestep",
                  "The mean squared error of the ε estimate on held-out latents, per bucket of timesteps (t = 0: "
                  "almost clean; t = T: almost pure noise). Fixed, stratified draws: runs compare bucket by bucket.")

    def figures_to_draw(self) -> tuple:
        return (self.samples, self.progression, self.losses, self.timestep_errors)


def denoiser_card(model, test, metrics: dict) -> dict:
    x, labels = test.__getitems__([0])
    labels = model.labels_for(labels)
    t = torch.zeros(1, dtype=torch.long)
    shape = list(test.image_shape)
    seconds = metrics.get("train", {}).get("train_time_s")
    return {"model": f"{model.registry_name} ({type(model).__name__}, {model.config.prediction_type} prediction)",
            "parameters": parameter_count(model), "input_shape": " × ".join(map(str, shape)) + " (noisy latent)",
            "input_values": int(np.prod(shape)), "latent_shape": " × ".join(map(str, shape)) + " (its noise estimate)",
            "latent_values": int(np.prod(shape)), "compression_ratio": None,
            "training_time": f"{seconds:.1f} s" if seconds is not None else "not recorded",
            "layers": layer_table(model, x, labels, call=lambda: model.predict(x, t, labels))}


def explore_denoiser(run_dir: Path, config, model, test, metrics: dict) -> tuple[DenoiserExplorer, list[str], dict]:
    """Draw the figures; returns the explorer, notes for the report, and the model card."""

    notes = []
    manifest = test.manifest
    try:
        vae = load_vae_for(manifest, device="cpu")
    except VaekitError as err:
        vae = None
        notes.append(f"Samples are not shown: {err}")
        log.warning("%s", err)
    explorer = DenoiserExplorer(run_dir, config, model.cpu().eval(), test, vae, manifest, metrics)
    explorer.all()
    return explorer, notes, denoiser_card(model, test, metrics)
