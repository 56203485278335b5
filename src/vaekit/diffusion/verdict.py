"""What the diffusability report concludes: which autoencoder generates better by the arbiter, by how much
and beyond which spread, which cheap signals ranked them the same way — and, from a meta-study of many
autoencoders, how far each cheap signal can be trusted to predict the arbiter.

The arbiter is a score of decoded Stage B samples against held-out images in a fixed feature space: FID
(Inception; its weights are needed), else the Fréchet distance in the features of a classifier trained on
the data's labels. Without either there is no verdict: the report names the cheap signal with the best
measured track record and that record, and ranks by it, saying that it is a fallback.
"""

from __future__ import annotations

import json
import statistics
from importlib import resources

from vaekit.metrics.generation import bootstrap_interval, spearman

ARBITERS = {"sample_fid": False, "sample_classifier_fd": False}
"""Arbiter scores in order of preference; the value says whether higher is better."""
SCORES = {"sample_fid": False, "sample_kid": False, "sample_classifier_fd": False, "sample_precision": True,
          "sample_recall": True, "sample_class_accuracy": True}
"""Every score of the samples (per denoiser seed), with its direction."""
SIGNALS = {
    "psnr": (True, "reconstruction PSNR of held-out images"),
    "ssim": (True, "reconstruction SSIM"),
    "lpips": (False, "reconstruction LPIPS (needs the VGG weights)"),
    "eps_mse": (False, "held-out ε-MSE of the denoiser at the fixed budget"),
    "latent_hf_fraction": (False, "share of the latents' spectral power at high frequency (Skorokhodov et al. 2025)"),
    "equivariance_mse_scale_0.5": (False, "error of decoding ×0.5-scaled latents against ×0.5-scaled images "
                                          "(EQ-VAE, Kouzelis et al. 2025)"),
    "equivariance_mse_rotate_90": (False, "the same for 90° rotations (EQ-VAE)"),
    "interpolation_fd": (False, "Fréchet distance of decoded midpoints between nearest-neighbour latents, in the "
                                "arbiter's feature space (iFID, arXiv 2603.05630)"),
    "latent_noise_psnr_drop": (False, "PSNR lost when the normalised latents get Gaussian noise of std 0.2 before "
                                      "decoding (robustness to latent error; l-DeTok, Yang et al. 2025)"),
}
"""Cheap signals: (higher is better, what it is and where it comes from)."""
TRACK_RECORD_FILE = "track_record.json"
"""The meta-study's measured rank correlation of each signal with the arbiter (``configs/study-signals.yaml``)."""


def arbiter_of(rows: list[dict]) -> str | None:
    """The arbiter score every row has (FID first), or None."""
    for name in ARBITERS:
        if rows and all(row.get(name) is not None for row in rows):
            return name
    return None


def _oriented(value: float, higher_is_better: bool) -> float:
    """A value where lower is always better."""
    return -value if higher_is_better else value


def _seed_range(row: dict, key: str) -> str:
    values = row.get(f"{key}_seeds") or [row[key]]
    return f"{min(values):.3g}–{max(values):.3g}" if len(values) > 1 else f"{values[0]:.3g}"


def _rounded(value: float) -> float:
    """Six significant digits: values that differ by float rounding alone (a signal blind to what tells the
    autoencoders apart, e.g. interpolation distances under a permutation of positions) rank as ties."""
    return float(f"{value:.6g}")


def agreement(rows: list[dict], arbiter: str) -> dict[str, float]:
    """For each cheap signal every row has: Spearman's ρ between its ranking and the arbiter's (1: the same
    order, −1: the reverse; NaN when the signal ties every row)."""
    better_first = [_oriented(row[arbiter], ARBITERS[arbiter]) for row in rows]
    out = {}
    for name, (higher, _) in SIGNALS.items():
        values = [row.get(name) for row in rows]
        if all(isinstance(v, (int, float)) for v in values):
            out[name] = spearman([_rounded(_oriented(v, higher)) for v in values], better_first)
    return out


def separated(best: dict, other: dict, arbiter: str) -> bool:
    """Whether every seed of ``best`` scored better than every seed of ``other`` (lower, for a lower-is-better
    arbiter)."""
    higher = ARBITERS[arbiter]
    b = [_oriented(v, higher) for v in best.get(f"{arbiter}_seeds") or [best[arbiter]]]
    o = [_oriented(v, higher) for v in other.get(f"{arbiter}_seeds") or [other[arbiter]]]
    return max(b) < min(o)


def verdict(rows: list[dict], reason: str = "") -> str:
    """One line: the verdict of the arbiter, or the fallback and its track record. ``reason``: why the
    arbiter is missing, when it is."""
    if len(rows) < 2:
        return "verdict: one autoencoder, nothing to compare"
    arbiter = arbiter_of(rows)
    if arbiter is None:
        return _fallback(rows, reason)
    ordered = sorted(rows, key=lambda row: _oriented(row[arbiter], ARBITERS[arbiter]))
    best, second = ordered[0], ordered[1]
    apart = separated(best, second, arbiter)
    agree = agreement(rows, arbiter)
    with_it = [name for name, rho in agree.items() if rho > 0.5]
    against = [name for name, rho in agree.items() if rho < -0.5]
    line = (f"verdict: {best['vae']} generates best by {arbiter} ({best[arbiter]:.4g}, seeds {_seed_range(best, arbiter)}"
            f" against {second['vae']}'s {second[arbiter]:.4g}, seeds {_seed_range(second, arbiter)}); ")
    line += ("the difference is beyond the seed spread" if apart else
             f"the seeds overlap, so {best['vae']} and {second['vae']} are not told apart at this budget")
    tied = [name for name, rho in agree.items() if rho != rho]
    line += f"; cheap signals that ranked them the same way: {', '.join(with_it) or 'none'}"
    line += f"; the other way: {', '.join(against)}" if against else ""
    return line + (f"; no difference: {', '.join(tied)}" if tied else "")


def load_track_record() -> dict | None:
    """The meta-study's table shipped with vaekit: {"signals": {name: {"rho", "low", "high"}}, "study": ...}."""
    source = resources.files("vaekit.diffusion").joinpath(TRACK_RECORD_FILE)
    return json.loads(source.read_text()) if source.is_file() else None


def _fallback(rows: list[dict], reason: str) -> str:
    record = load_track_record()
    if record is None:
        return f"no verdict: {reason}"
    usable = {name: r for name, r in record["signals"].items()
              if all(isinstance(row.get(name), (int, float)) for row in rows)}
    if not usable:
        return f"no verdict: {reason}; and no cheap signal with a track record was measured"
    name, r = max(usable.items(), key=lambda item: item[1]["rho"])
    order = sorted(rows, key=lambda row: _oriented(row[name], SIGNALS[name][0]))
    return (f"no verdict ({reason}): falling back on {name}, whose rank correlation with the arbiter in the "
            f"meta-study was ρ = {r['rho']:.2f} (90 % bootstrap interval {r['low']:.2f} to {r['high']:.2f}, "
            f"{record['study']}); by it: {' < '.join(row['vae'] for row in order)} (better first)")


def track_record(rows: list[dict], group_of, arbiter: str) -> dict:
    """Each cheap signal's Spearman ρ with the arbiter over groups of rows (an autoencoder configuration's
    seeds: means over the group), with a 90 % bootstrap interval over the groups."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_of(row), []).append(row)
    target = [statistics.fmean(_oriented(r[arbiter], ARBITERS[arbiter]) for r in g) for g in groups.values()]
    out = {}
    for name, (higher, _) in SIGNALS.items():
        if not all(isinstance(r.get(name), (int, float)) for g in groups.values() for r in g):
            continue
        signal = [statistics.fmean(_oriented(r[name], higher) for r in g) for g in groups.values()]
        low, high = bootstrap_interval(signal, target)
        out[name] = {"rho": spearman(signal, target), "low": low, "high": high}
    return {"arbiter": arbiter, "groups": list(groups), "signals": out}


def configurations(rows: list[dict], group_of) -> list[dict] | None:
    """One row per configuration when some configuration was trained with several seeds (else None): each
    number the mean over its autoencoders, each score's per-seed values pooled over them (so the seed range
    and spread cover the autoencoders' seeds and the denoiser's), ``members`` the autoencoders."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_of(row), []).append(row)
    if all(len(members) == 1 for members in groups.values()):
        return None
    out = []
    for name, members in groups.items():
        merged: dict = {"vae": name, "members": [m["vae"] for m in members]}
        for key in members[0]:
            values = [m.get(key) for m in members]
            if key.endswith("_seeds") and all(isinstance(v, list) for v in values):
                merged[key] = [x for v in values for x in v]
            elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                merged[key] = statistics.fmean(values)
        for key in list(merged):
            if key.endswith("_seeds") and f"{key[:-6]}_spread" in merged:
                merged[f"{key[:-6]}_spread"] = max(merged[key]) - min(merged[key])
        out.append(merged)
    return out
