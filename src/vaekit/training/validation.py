"""Validation while training: the model's metrics on a fixed held-out subset, and the best weights so far.

The subset is ``train.validation_examples`` test examples, the same at every validation (picked from the
seed). Image autoencoders get PSNR and SSIM (the mean over images, as published tables report), L1,
MSE, LPIPS when its VGG weights are on the machine, the reconstructions' high-frequency energy over the
originals' (``hf_energy_ratio``: blur < 1, GAN texture towards 1), and the cheap signals of how well a
diffusion model will learn the latents that the meta-study found predictive (``LATENT_SIGNALS``, on up to
64 of the images: one more encode and one decode); VAEs the negative ELBO at β = 1 (one posterior
sample from a fixed generator), its two terms and MSE; plain autoencoders reconstruction and MSE.

The model selected this way is chosen on held-out data that ``vaekit eval`` reports on too: the
final model, not the best one, is what evaluation scores, so the reported test metrics are not
selected on the test data.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch import nn

from vaekit.errors import ConfigError
from vaekit.io.atomic import restore_folder, write_folder, write_json
from vaekit.io.models import write_model
from vaekit.metrics.image import high_frequency_energy, per_image_psnr, ssim
from vaekit.metrics.latent import latent_signals
from vaekit.runs import BEST_DIR
from vaekit.training.memory import (ValidationOutOfMemory, available_bytes, choose_validation_batch,
                                    is_out_of_memory, validation_bytes_per_image)

log = logging.getLogger("vaekit")

LATENT_SIGNALS = ("latent_hf_fraction", "equivariance_mse_rotate_90")
"""The cheap latent signals validation logs, by the report's own function (``metrics.latent.latent_signals``,
seeded posterior samples): the two with the highest rank correlation with generation quality in the shipped
meta-study (docs/diffusion.md). One study, one dataset at 32², wide intervals: a trend to watch, not a score
to select on. The ×0.5 equivariance error is left to the diffusability report."""
LOWER_IS_BETTER = frozenset({"negative_elbo", "reconstruction", "kl", "mse", "l1", "lpips", "eps_mse", *LATENT_SIGNALS})


def metric_names(model: nn.Module) -> tuple[str, ...]:
    if model.kind == "denoiser":
        return ("eps_mse",)
    if not model.has_likelihood:
        return ("psnr", "ssim", "l1", "mse", "lpips", *LATENT_SIGNALS)
    if model.deterministic:
        return ("reconstruction", "mse")
    return ("negative_elbo", "reconstruction", "kl", "mse")


def default_metric(model: nn.Module) -> str:
    return metric_names(model)[0]


def check_best_metric(model: nn.Module | type, best_metric: str | None) -> str:
    """The metric that selects the best weights (the model's default when None), or a ConfigError;
    ``model`` may be the model's class."""
    names = metric_names(model)
    metric = best_metric or default_metric(model)
    if metric not in names:
        raise ConfigError(f"train.best_metric {metric!r} is not a validation metric of {model.registry_name}; "
                          f"choose one of: {', '.join(names)}")
    return metric


def better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return math.isfinite(value)
    return value < best if metric in LOWER_IS_BETTER else value > best


class Validator:
    """Scores a model on the fixed subset; ``images`` holds the subset in the model's value range.

    ``batch_size`` None (image autoencoders only): the batch is chosen at the first validation from
    ``bytes_per_image`` (estimated here) and the memory the device has then. An out-of-memory error
    halves the batch, for this validation and the later ones, down to 1."""

    def __init__(self, model: nn.Module, test_data, count: int, best_metric: str | None, seed: int,
                 batch_size: int | None, device: torch.device, to_model_range):
        self.metric = check_best_metric(model, best_metric)
        self.test_data = test_data
        self.indices = test_data.spread_indices(count, seed)
        x, labels = test_data.__getitems__(self.indices)
        self.images, self.labels = to_model_range(x), labels
        self.conditional = model.conditional
        self.seed, self.batch_size, self.device = seed, batch_size, device
        self.lpips = None
        if model.kind == "autoencoder" and not model.has_likelihood:
            from vaekit.losses.perceptual import WeightsUnavailable, make_lpips

            try:
                self.lpips = make_lpips(pretrained_backbone=True).to(device)
            except WeightsUnavailable as err:
                log.info("validation without LPIPS: %s", err)
            if self.metric == "lpips" and self.lpips is None:
                raise ConfigError("train.best_metric=lpips needs LPIPS's VGG weights, which are not on this machine")
            self.bytes_per_image = validation_bytes_per_image(model, tuple(self.images.shape[1:]), self.lpips)
        elif batch_size is None:
            raise ValueError(f"{model.registry_name} has no memory estimate: give its validation a batch size")
        else:
            self.bytes_per_image = None

    def _chosen_batch_size(self) -> int:
        if self.batch_size is None:
            budget, where = available_bytes(self.device)
            self.batch_size = choose_validation_batch(self.bytes_per_image, budget, len(self.images))
            log.info("validation batch: %d image(s) of %s (about %.0f MiB each, estimated; %s)", self.batch_size,
                     "×".join(str(s) for s in self.images.shape[1:]), self.bytes_per_image / 2 ** 20, where)
        return self.batch_size

    def _halving_on_oom(self, score):
        """``score(batch_size)``, tried again with half the batch after an out-of-memory error, down to 1
        image; the halved size is kept for later validations."""
        while True:
            batch_size = self._chosen_batch_size()
            try:
                return score(batch_size)
            except Exception as err:  # only out-of-memory errors are handled; the rest go up unchanged
                if not is_out_of_memory(err):
                    raise
                if batch_size == 1:
                    raise ValidationOutOfMemory(
                        f"validation ran out of memory on {self.device} even one image at a time "
                        f"({'×'.join(str(s) for s in self.images.shape[1:])}): free memory on the device (other "
                        "processes on it?) or validate smaller images. The last checkpoint is intact (one due at "
                        "this step is written before validating): resume with vaekit train --resume RUN_DIR "
                        f"({type(err).__name__}: {err})") from err
            # Outside the except clause: the failed attempt's tensors (held by the traceback) are gone.
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.batch_size = batch_size // 2
            log.warning("validation ran out of memory with a batch of %d; trying again with %d", batch_size,
                        self.batch_size)

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> tuple[dict[str, float], torch.Tensor]:
        """The metrics, and up to 8 images above their reconstructions ``(2, n, C, H, W)`` for a figure
        (None for the denoiser: its held-out ε-MSE on fixed draws, ``vaekit.diffusion.evaluation``)."""
        if model.kind == "denoiser":
            from torch.utils.data import Subset

            from vaekit.diffusion.evaluation import held_out_eps_mse

            subset = Subset(self.test_data, self.indices)
            metrics = self._halving_on_oom(lambda batch_size: held_out_eps_mse(
                model, subset, draws=4, seed=self.seed, batch_size=batch_size, device=self.device))
            return {"eps_mse": metrics["eps_mse"]}, None
        was_training = model.training
        model.eval()
        metrics, shown = self._halving_on_oom(lambda batch_size: self._scores(model, batch_size))
        if not model.has_likelihood and model.latent_layout == "spatial":
            images = self.images[:64].to(self.device)
            metrics.update(self._halving_on_oom(lambda batch_size: latent_signals(
                model, images, transforms=("rotate_90",), seed=self.seed, batch_size=min(batch_size, 16))))
        model.train(was_training)
        if "mse" in metrics and model.has_likelihood:
            metrics["mse"] /= self.images[0].numel()
        return metrics, shown

    def _scores(self, model: nn.Module, batch_size: int) -> tuple[dict[str, float], torch.Tensor]:
        """The means over the subset of the per-batch metrics, and the images shown; the same for any
        ``batch_size`` (up to rounding; the VAEs' posterior samples come from one generator, so they
        depend on how it is split)."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        sums: dict[str, float] = {}
        shown = None
        for start in range(0, len(self.images), batch_size):
            x = self.images[start:start + batch_size].to(self.device)
            labels = self.labels[start:start + batch_size].to(self.device) if self.conditional else None
            batch, reconstruction = (self._likelihood(model, x, labels, generator) if model.has_likelihood
                                     else self._image(model, x))
            for key, value in batch.items():
                sums[key] = sums.get(key, 0.0) + value
            if shown is None:
                shown = torch.stack([x[:8], reconstruction[:8]]).float().cpu()
        metrics = {key: value / len(self.images) for key, value in sums.items()}
        if "hf_original" in metrics:
            metrics["hf_energy_ratio"] = metrics.pop("hf_reconstruction") / max(metrics.pop("hf_original"), 1e-30)
        return metrics, shown

    def _image(self, model, x):
        reconstruction = model.decode(model.encode(x).mode(), size=x.shape[2:]).clamp(-1, 1)
        difference = (reconstruction - x).double()
        sums = {"psnr": per_image_psnr(reconstruction, x).sum().item(),
                "ssim": ssim(reconstruction.float(), x.float()).sum().item(),
                "l1": difference.abs().flatten(1).mean(1).sum().item(),
                "mse": difference.pow(2).flatten(1).mean(1).sum().item()}
        if self.lpips is not None:
            sums["lpips"] = self.lpips(reconstruction.float(), x.float()).sum().item()
        sums["hf_reconstruction"] = high_frequency_energy(reconstruction.float()).sum().item()
        sums["hf_original"] = high_frequency_energy(x.float()).sum().item()
        return sums, reconstruction

    def _likelihood(self, model, x, labels, generator):
        posterior = model.encode(x, labels)
        reconstruction_term = -model.decode_distribution(posterior.sample(generator), labels).log_prob(x)
        mean_decoding = model.decode(posterior.mode(), labels)
        sums = {"reconstruction": reconstruction_term.sum().item(),
                "mse": (mean_decoding - x).double().pow(2).sum().item()}
        if not model.deterministic:
            kl = posterior.kl()
            sums.update(kl=kl.sum().item(), negative_elbo=(reconstruction_term + kl).sum().item())
        return sums, mean_decoding


def save_best(run_dir: Path, model: nn.Module, record: dict) -> Path:
    """Write the weights and ``best.json`` into ``RUN_DIR/best/``, replacing the previous best in two
    renames (``io.atomic.write_folder``: a kill between them leaves ``.best-previous``, which ``restore_best``
    puts back)."""

    def write(tmp: Path) -> None:
        write_model(model, tmp)
        write_json(tmp / "best.json", record)

    return write_folder(run_dir / BEST_DIR, write)


def restore_best(run_dir: Path) -> None:
    """Undo a replacement of the best weights that a kill interrupted, and remove half-written ones."""
    restore_folder(run_dir / BEST_DIR)


def read_best(run_dir: Path) -> dict | None:
    path = Path(run_dir) / BEST_DIR / "best.json"
    return json.loads(path.read_text()) if path.is_file() else None
