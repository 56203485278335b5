"""Held-out denoising error: ε-MSE over fixed (t, ε) draws, overall and per timestep bucket.

Every latent is noised at ``draws`` timesteps spread evenly over [0, T) (stratified, so the overall mean
has little variance) with noise from a fixed seed, so two evaluations of the same model agree exactly and
two models are scored on the same draws. A v-predicting model's output is turned into its ε estimate
(ε̂ = √ᾱ_t · v̂ + √(1 − ᾱ_t) · c_t), so the error is comparable across prediction types.
"""

from __future__ import annotations

import torch

from vaekit.data.base import batch_loader
from vaekit.progress import progress


def epsilon_estimate(model, prediction: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if model.config.prediction_type == "epsilon":
        return prediction
    alpha_bar = model.scheduler.alphas_cumprod.to(noisy.device)[t].to(noisy.dtype).view(-1, 1, 1, 1)
    return alpha_bar.sqrt() * prediction + (1 - alpha_bar).sqrt() * noisy


@torch.no_grad()
def held_out_eps_mse(model, dataset, draws: int = 10, buckets: int = 10, seed: int = 0, batch_size: int = 64,
                     device: str | torch.device = "cpu", show_progress: bool = False) -> dict:
    """``{"eps_mse": mean, "eps_mse_by_timestep": [per bucket], "timestep_buckets": [[lo, hi), ...]}`` of
    ``model`` on ``dataset`` (``(latents, labels)`` batches)."""
    was_training = model.training
    model.eval()
    T = model.config.num_train_timesteps
    timesteps = ((torch.arange(draws, dtype=torch.float64) + 0.5) * T / draws).long()
    bucket_of = (timesteps * buckets // T).tolist()
    generator = torch.Generator().manual_seed(seed)
    sums, counts = [0.0] * buckets, [0] * buckets
    loader = batch_loader(dataset, batch_size=batch_size)
    if show_progress:
        loader = progress(loader, total=-(-len(dataset) // batch_size), desc="eval (held-out ε-MSE)", unit="batch")
    for latents, labels in loader:
        latents = latents.to(device)
        labels = model.labels_for(labels.to(device))
        for t_value, bucket in zip(timesteps.tolist(), bucket_of):
            noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
            t = torch.full((len(latents),), t_value, device=device, dtype=torch.long)
            noisy = model.add_noise(latents, noise, t)
            estimate = epsilon_estimate(model, model.predict(noisy, t, labels), noisy, t)
            sums[bucket] += (estimate.double() - noise.double()).pow(2).flatten(1).mean(1).sum().item()
            counts[bucket] += len(latents)
    model.train(was_training)
    by_bucket = [s / c if c else None for s, c in zip(sums, counts)]
    return {"eps_mse": sum(sums) / sum(counts), "eps_mse_by_timestep": by_bucket,
            "timestep_buckets": [[b * T // buckets, (b + 1) * T // buckets] for b in range(buckets)]}
