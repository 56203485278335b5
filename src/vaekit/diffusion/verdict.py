"""What the diffusability report concludes: which autoencoder generates best by the arbiter, whether it is
told apart from every other one by a stated test, which cheap signals ranked them the same way — and, from
a meta-study of many autoencoders, how far each cheap signal can be trusted to predict the arbiter.

The arbiter is a score of decoded Stage B samples against held-out images in a judge's feature space
(``judge.py``: FD_DINOv2, FID, or a classifier's FD). A separation is claimed only from at least
``MIN_VALUES`` values a side (autoencoder seeds × denoiser seeds, pooled), by a two-sided permutation test
of the means, Holm-adjusted over the winner's comparisons with every other autoencoder. Without a judge
allowed to decide there is no verdict: the report falls back on the cheap signal with the best measured
track record that tells the autoencoders apart, names where that record was measured, and says it is a
fallback.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from importlib import resources

import numpy as np

from vaekit.metrics.generation import bootstrap_interval, spearman

ARBITERS = {"sample_fd_dinov2": False, "sample_fid": False, "sample_classifier_fd": False}
"""Arbiter scores in order of preference (FD_DINOv2, FID, the classifier's FD); the value says whether higher
is better."""
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


def arbiter_of(rows: list[dict], refused: dict[str, str] | None = None) -> str | None:
    """The first arbiter score (in ``ARBITERS``' order) that every row has and that was not ``refused``, or None."""
    for name in ARBITERS:
        if name not in (refused or {}) and rows and all(row.get(name) is not None for row in rows):
            return name
    return None


def _oriented(value: float, higher_is_better: bool) -> float:
    """A value where lower is always better."""
    return -value if higher_is_better else value


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


MIN_VALUES = 4
"""The fewest values a side (autoencoder seeds × denoiser seeds, pooled) for which the verdict tests a difference.
With two a side, two of the six equally likely orderings put one side wholly below the other by chance alone;
with three, the smallest two-sided p-value is 2/20 = 0.1, so no difference could ever reach α = 0.05; with four
it is 2/70."""
ALPHA = 0.05
"""The significance level of each of the winner's comparisons, after Holm's adjustment over all of them."""
EXACT_LIMIT = 200_000
"""Up to this many ways to split the pooled values, the permutation test enumerates them all."""
RESAMPLES = 20_000
"""Beyond ``EXACT_LIMIT`` splits, how many seeded random splits the permutation test draws."""
TEST_NAME = "two-sided permutation test of the means, Holm-adjusted over the winner's comparisons"


def _values(row: dict, key: str) -> list[float]:
    return list(row.get(f"{key}_seeds") or [row[key]])


def permutation_p_value(a, b, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """The two-sided permutation test of equal means: the share of all splits of the pooled values into groups
    of ``len(a)`` and ``len(b)`` whose difference of means is at least the observed one in absolute value
    (exact when there are at most ``EXACT_LIMIT`` splits; else ``resamples`` seeded random splits, counted as
    (hits + 1) / (resamples + 1))."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pooled, n = np.concatenate([a, b]), len(a)
    observed = abs(a.mean() - b.mean())
    tolerance = 1e-9 * max(np.abs(pooled).max(), 1e-300)  # splits equal to the observed up to rounding count
    total = pooled.sum()
    if math.comb(len(pooled), n) <= EXACT_LIMIT:
        splits = np.array(list(itertools.combinations(range(len(pooled)), n)))
        sums = pooled[splits].sum(axis=1)
        differences = np.abs(sums / n - (total - sums) / len(b))
        return float((differences >= observed - tolerance).mean())
    rng = np.random.default_rng(seed)
    sums = np.array([pooled[rng.permutation(len(pooled))[:n]].sum() for _ in range(resamples)])
    hits = (np.abs(sums / n - (total - sums) / len(b)) >= observed - tolerance).sum()
    return float((hits + 1) / (resamples + 1))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (family-wise error over all of them), in their order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def smallest_p_value(n: int, m: int, resamples: int = RESAMPLES) -> float:
    """The smallest p-value ``permutation_p_value`` can give with ``n`` and ``m`` values, whatever they are: the
    observed split alone as extreme (1 of C(n + m, n)), or it and its mirror when n = m (2 of them); sampled
    splits, 1 / (resamples + 1)."""
    splits = math.comb(n + m, n)
    if splits > EXACT_LIMIT:
        return 1 / (resamples + 1)
    return (2 if n == m else 1) / splits


def comparisons(best: dict, others: list[dict], arbiter: str) -> list[dict]:
    """The winner against each other row: ``{"vae", "p", "p_min"}`` with the Holm-adjusted p-value and the
    smallest one these numbers of values could give (Holm-adjusted over the same comparisons), both None where
    a side has fewer than ``MIN_VALUES`` values (the spread was not measured)."""
    mine = _values(best, arbiter)
    tested = [o for o in others if len(mine) >= MIN_VALUES and len(_values(o, arbiter)) >= MIN_VALUES]
    adjusted = holm([permutation_p_value(mine, _values(o, arbiter)) for o in tested]) if tested else []
    floors = holm([smallest_p_value(len(mine), len(_values(o, arbiter))) for o in tested]) if tested else []
    p_of = {id(o): (p, low) for o, p, low in zip(tested, adjusted, floors)}
    out = []
    for o in others:
        p, low = p_of.get(id(o), (None, None))
        out.append({"vae": o["vae"], "p": p, "p_min": low})
    return out


def values_needed(comparisons_count: int) -> int:
    """The fewest values a side (equal sides) with which a separation from every one of ``comparisons_count``
    rows could reach ``ALPHA`` after Holm's adjustment."""
    n = MIN_VALUES
    while comparisons_count * smallest_p_value(n, n) >= ALPHA:
        n += 1
    return n


def _unreachable(results: list[dict]) -> str:
    """What the seed counts allow, when no outcome of them could show the winner apart from every other row."""
    floors = [r["p_min"] for r in results if r["p_min"] is not None]
    if not floors or max(floors) < ALPHA:
        return ""
    return (f"; these numbers of values cannot show it: the smallest p any outcome could give is {max(floors):.2g} "
            f"(≥ α after Holm's adjustment over {len(floors)} comparison{'s' if len(floors) > 1 else ''}), so "
            f"'not told apart' here says nothing of the difference; {values_needed(len(results))} values a side "
            f"(autoencoder seeds × denoiser seeds) could")


def _described(row: dict, arbiter: str) -> str:
    values = _values(row, arbiter)
    spread = f", {len(values)} values {min(values):.3g}–{max(values):.3g}" if len(values) > 1 else ", 1 value"
    floor = row.get(f"floor_{arbiter}")
    return f"{row[arbiter]:.4g}{spread}" + (f"; real-vs-real floor {floor:.3g}" if floor is not None else "")


def _against(row: dict, result: dict, arbiter: str) -> str:
    head = f"{row['vae']} ({_described(row, arbiter)})"
    if result["p"] is None:
        return f"{head}: the spread was not measured (a test needs at least {MIN_VALUES} values a side)"
    told = "told apart" if result["p"] < ALPHA else "not told apart"
    return f"{head}: {told}, p = {result['p']:.2g}"


def arbiter_line(rows: list[dict], arbiter: str) -> str:
    """The verdict of ``arbiter``: the best row by its mean, compared with every other row."""
    ordered = sorted(rows, key=lambda row: _oriented(row[arbiter], ARBITERS[arbiter]))
    best, others = ordered[0], ordered[1:]
    results = comparisons(best, others, arbiter)
    apart = all(r["p"] is not None and r["p"] < ALPHA for r in results)
    claim = "generates best" if apart else "scored best"
    line = f"verdict: {best['vae']} {claim} by {arbiter} ({_described(best, arbiter)}); against "
    line += "; ".join(_against(row, result, arbiter) for row, result in zip(others, results))
    if any(r["p"] is not None for r in results):
        line += f" ({TEST_NAME}, α = {ALPHA})"
    if not apart:
        line += f"; {best['vae']} is not shown better than every other at this budget" + _unreachable(results)
    return line


def verdict(rows: list[dict], reason: str = "", refused: dict[str, str] | None = None,
            setting: dict | None = None) -> str:
    """One line: the verdict of the arbiter, or the fallback and its track record. ``reason``: why the
    arbiter is missing, when it is; ``refused``: arbiter scores that may not decide, with why (a judge below
    its accuracy bar); ``setting``: the data and resolution compared, which the fallback checks its record's
    against."""
    if len(rows) < 2:
        return "verdict: one autoencoder, nothing to compare"
    arbiter = arbiter_of(rows, refused)
    if arbiter is None:
        reasons = [reason] if reason and not refused else []
        return _fallback(rows, "; ".join(reasons + list((refused or {}).values())) or reason, setting)
    agree = agreement(rows, arbiter)
    with_it = [name for name, rho in agree.items() if rho > 0.5]
    against = [name for name, rho in agree.items() if rho < -0.5]
    tied = [name for name, rho in agree.items() if rho != rho]
    line = arbiter_line(rows, arbiter)
    line += f"; cheap signals that ranked them the same way: {', '.join(with_it) or 'none'}"
    line += f"; the other way: {', '.join(against)}" if against else ""
    return line + (f"; no difference: {', '.join(tied)}" if tied else "")


def load_track_record() -> dict | None:
    """The meta-study's table shipped with vaekit: {"signals": {name: {"rho", "low", "high"}}, "study": ...}."""
    source = resources.files("vaekit.diffusion").joinpath(TRACK_RECORD_FILE)
    return json.loads(source.read_text()) if source.is_file() else None


def _order_by(rows: list[dict], name: str) -> str | None:
    """The rows ranked by cheap signal ``name``, better first, ties joined by "=" ("a < b = c"); None when
    every row ties (the signal gives no order)."""
    keyed = sorted((_rounded(_oriented(row[name], SIGNALS[name][0])), row["vae"]) for row in rows)
    if keyed[0][0] == keyed[-1][0]:
        return None
    parts = [keyed[0][1]]
    for (previous, _), (value, vae) in zip(keyed, keyed[1:]):
        parts.append(f"{'=' if value == previous else '<'} {vae}")
    return " ".join(parts)


def _setting_note(record: dict, setting: dict | None) -> str:
    """Where the record was measured, and whether this comparison's setting differs."""
    where = record.get("setting") or {}
    text = ", ".join(f"{key} {value}" for key, value in where.items()) or "an unrecorded setting"
    differs = {key: setting[key] for key in where if setting and key in setting and setting[key] != where[key]}
    if differs:
        text += " — not this comparison's (" + ", ".join(f"{k} {v}" for k, v in differs.items()) + \
                "), so the record may not carry over"
    return f"measured on {text}"


def _fallback(rows: list[dict], reason: str, setting: dict | None = None) -> str:
    """Without an arbiter: the order of the measured cheap signal with the best track record shown positive
    (its interval above 0) that tells the rows apart (a signal tied on every row gives no order, and the next
    is tried); none such, no order at all."""
    record = load_track_record()
    if record is None:
        return f"no verdict: {reason}"
    measured = sorted(((name, r) for name, r in record["signals"].items() if name in SIGNALS
                       and all(isinstance(row.get(name), (int, float)) for row in rows)),
                      key=lambda item: -item[1]["rho"])
    candidates = [(name, r) for name, r in measured if r["low"] > 0]  # a record shown positive, not a hope
    if not candidates:
        if not measured:
            return f"no verdict: {reason}; and no cheap signal with a track record was measured"
        name, r = measured[0]
        return (f"no verdict: {reason}; and no measured cheap signal has a track record shown positive (its 90 % "
                f"interval above 0) to fall back on: the best, {name}, had ρ = {r['rho']:.2f} ({r['low']:.2f} to "
                f"{r['high']:.2f}, {_setting_note(record, setting)})")
    tied = []
    for name, r in candidates:
        order = _order_by(rows, name)
        if order is not None:
            break
        tied.append(name)
    else:
        return f"no verdict: {reason}; every cheap signal with a track record ties them ({', '.join(tied)})"
    skipped = f"; {', '.join(tied)} tied every autoencoder" if tied else ""
    return (f"no verdict ({reason}): falling back on {name}, whose rank correlation with the arbiter in the "
            f"meta-study was ρ = {r['rho']:.2f} (90 % bootstrap interval {r['low']:.2f} to {r['high']:.2f}, "
            f"{_setting_note(record, setting)}){skipped}; by it: {order} (better first)")


def track_record(rows: list[dict], group_of, arbiter: str) -> dict:
    """Each cheap signal's Spearman ρ with the arbiter over groups of rows (an autoencoder configuration's
    seeds: means over the group), with a 90 % bootstrap interval over the groups. When the configurations
    span several downsampling factors, ``within_factor`` holds the same record for each factor with four or
    more configurations: a signal that only tells f = 8 from f = 4 shows its ρ there, not its power
    within one factor."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_of(row), []).append(row)
    out = {"arbiter": arbiter, "groups": list(groups), "signals": _correlations(list(groups.values()), arbiter)}
    factors: dict[int, list[list[dict]]] = {}
    for members in groups.values():
        factor = members[0].get("downsampling_factor")
        if factor is not None:
            factors.setdefault(int(factor), []).append(members)
    if len(factors) > 1:
        out["within_factor"] = {str(f): {"groups": [group_of(m[0]) for m in members],
                                         "signals": _correlations(members, arbiter)}
                                for f, members in sorted(factors.items()) if len(members) >= 4}
    return out


def _correlations(groups: list[list[dict]], arbiter: str) -> dict:
    """Each signal's ρ with the arbiter over ``groups`` (means over each group's rows), with its interval."""
    target = [statistics.fmean(_oriented(r[arbiter], ARBITERS[arbiter]) for r in g) for g in groups]
    out = {}
    for name, (higher, _) in SIGNALS.items():
        if not all(isinstance(r.get(name), (int, float)) for g in groups for r in g):
            continue
        signal = [statistics.fmean(_oriented(r[name], higher) for r in g) for g in groups]
        low, high = bootstrap_interval(signal, target)
        out[name] = {"rho": spearman(signal, target), "low": low, "high": high}
    return out


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
