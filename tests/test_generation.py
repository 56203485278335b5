"""The arbiter's scores and the statistics that rank cheap signals against it."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from vaekit.data.objects import CLASS_NAMES, make_objects, object_mask
from vaekit.metrics.generation import bootstrap_interval, precision_recall, spearman


def test_precision_and_recall_against_a_hand_computed_case():
    # Real points on a line at 0, 1, 2, 3, 10: with k = 1 each one's radius is the distance to its nearest
    # other point: 1, 1, 1, 1, 7.
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    # Generated points: 0.5 (inside), 20 (outside every ball: 10 + 7 = 17 < 20), 16 (inside 10's ball), 30
    generated = torch.tensor([[0.5], [20.0], [16.0], [30.0]])
    result = precision_recall(real, generated, k=1)
    assert result["precision"] == pytest.approx(2 / 4)
    # Generated radii (k = 1): 0.5 -> 15.5, 20 -> 4, 16 -> 4, 30 -> 10. Real points within one of them: 0, 1,
    # 2, 3, 10 are all within 15.5 of 0.5.
    assert result["recall"] == pytest.approx(1.0)
    same = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(same, same) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(same, same + 100.0) == {"precision": 0.0, "recall": 0.0}
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(same[:3], same)


def test_a_collapsed_generator_has_precision_without_recall():
    rng = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 2, generator=rng)
    collapsed = 0.1 * torch.randn(500, 2, generator=rng)  # every sample near the mode: faithful, no coverage
    result = precision_recall(real, collapsed)
    assert result["precision"] > 0.95 and result["recall"] < 0.2


def test_spearman_matches_scipy_and_the_bootstrap_brackets_it():
    rng = np.random.default_rng(0)
    a = rng.normal(size=12)
    b = a + 0.5 * rng.normal(size=12)
    b[3] = b[4]  # a tie
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    low, high = bootstrap_interval(a, b)
    assert low <= spearman(a, b) <= high and low > 0
    assert bootstrap_interval(a, 2 * a) == pytest.approx((1.0, 1.0), abs=1e-12)  # monotone in every resample
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_object_masks_have_their_closed_form_areas():
    """Areas of the masks in the object's unit frame, on a 2000² grid (each point a 2e-6 cell): a circle of
    radius 0.9, a square of side 1.44, a ring 0.55–0.95, the triangle with apex (0, 1) and base at -0.5,
    the regular hexagon of inradius 0.8."""
    u, v = np.meshgrid(np.linspace(-1.2, 1.2, 2000), np.linspace(-1.2, 1.2, 2000))
    cell = (2.4 / 1999) ** 2
    expected = {0: math.pi * 0.81, 1: 1.44 ** 2, 5: math.pi * (0.95 ** 2 - 0.55 ** 2), 2: 1.5 * 1.5 / math.sqrt(3),
                6: 2 * math.sqrt(3) * 0.8 ** 2}
    for kind, area in expected.items():
        assert object_mask(kind, u, v).sum() * cell == pytest.approx(area, rel=0.01), CLASS_NAMES[kind]
    areas = [object_mask(kind, u, v).sum() for kind in range(10)]
    assert all(a > 0 for a in areas)
    masks = [object_mask(kind, u, v) for kind in range(10)]  # no two kinds alike
    assert min((a != b).mean() for i, a in enumerate(masks) for b in masks[i + 1:]) > 0.02


def test_objects_are_deterministic_balanced_and_coloured():
    images, labels = make_objects(40, 32, seed=0, stream=0)
    again, _ = make_objects(40, 32, seed=0, stream=0)
    other, _ = make_objects(40, 32, seed=0, stream=1)
    assert images.shape == (40, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images, again) and not np.array_equal(images, other)
    assert np.bincount(labels).tolist() == [4] * 10
    # image i depends on (seed, stream, i) alone: a longer run starts with the same images
    assert np.array_equal(make_objects(10, 32, seed=0, stream=0)[0], images[:10])
    assert (images.astype(int).std(axis=1) > 10).mean() > 0.5  # colour: the channels differ
    big, _ = make_objects(10, 64, seed=0, stream=0)
    assert big.shape == (10, 3, 64, 64)


def _small_kl(**fields):
    import vaekit

    torch.manual_seed(0)
    return vaekit.create_model("autoencoder-kl", block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8,
                               latent_channels=3, **fields).eval()


def test_the_permuted_control_reconstructs_alike_with_scrambled_positions(tmp_path):
    from vaekit.errors import VaekitError
    from vaekit.io.convert import export_diffusers
    from vaekit.models.tiling import tiled_decode, tiled_encode

    good, damaged = _small_kl(), _small_kl(latent_permutation=3)
    damaged.load_state_dict(good.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z_good, z_damaged = good.encode(x), damaged.encode(x)
        assert torch.equal(good.reconstruct(x), damaged.reconstruct(x))  # the same image out
        # the same values per channel, at other positions: a permutation, not the identity
        assert torch.equal(z_good.mean.flatten(2).sort(2).values, z_damaged.mean.flatten(2).sort(2).values)
        assert not torch.equal(z_good.mean, z_damaged.mean)
        order = damaged._positions(z_damaged.mean)
        assert torch.equal(z_damaged.logvar.flatten(2), z_good.logvar.flatten(2)[:, :, order])
        # the tiled paths scramble and restore the same way
        tiled_good, tiled_damaged = (tiled_encode(m, x, tile=16, overlap=8) for m in (good, damaged))
        assert torch.equal(tiled_damaged.mean.flatten(2), tiled_good.mean.flatten(2)[:, :, order])
        assert torch.equal(tiled_decode(damaged, tiled_damaged.mean, tile=16, overlap=8),
                           tiled_decode(good, tiled_good.mean, tile=16, overlap=8))
    with pytest.raises(VaekitError, match="latent_permutation"):
        export_diffusers(damaged, tmp_path / "d")


def _row(name, arbiter_seeds, **signals):
    return {"vae": name, "sample_classifier_fd": float(np.mean(arbiter_seeds)), "sample_classifier_fd_seeds": arbiter_seeds,
            **signals}


def test_the_verdict_names_the_winner_the_spread_and_the_signals_that_agreed():
    from vaekit.diffusion.verdict import verdict

    rows = [_row("a", [30.0, 34.0, 31.0, 33.0], eps_mse=0.09, psnr=25.0),
            _row("b", [10.0, 12.0, 11.0, 11.0], eps_mse=0.08, psnr=24.0)]
    line = verdict(rows)
    assert line.startswith("verdict: b generates best by sample_classifier_fd (11, 4 values 10–12); against a (32, "
                           "4 values 30–34): told apart, p = 0.029 (two-sided permutation test")
    assert "same way: eps_mse" in line and "the other way: psnr" in line
    close = [_row("a", [10.0, 14.0, 12.0, 12.0], eps_mse=0.09), _row("b", [11.0, 12.0, 11.5, 11.5], eps_mse=0.08)]
    assert "b scored best" in verdict(close) and "not told apart" in verdict(close)
    unlabelled = [{"vae": "a", "sample_classifier_fd": None, "eps_mse": 0.09},
                  {"vae": "b", "sample_classifier_fd": None, "eps_mse": 0.08}]
    line = verdict(unlabelled, "the images are unlabelled")
    assert line.startswith("no verdict") and "the images are unlabelled" in line
    assert verdict(rows[:1]).startswith("verdict: one autoencoder")
    # the fallback quotes the meta-study record of the best signal shown positive that every row has
    from vaekit.diffusion import verdict as module
    from vaekit.diffusion.verdict import SIGNALS, load_track_record

    shipped = load_track_record()
    record = {"signals": {"eps_mse": {"rho": 0.3, "low": -0.2, "high": 0.7},
                          "latent_hf_fraction": {"rho": 0.6, "low": 0.2, "high": 0.9}}, "setting": shipped["setting"]}
    best = "latent_hf_fraction"
    unmeasured = [{"vae": "a", "sample_classifier_fd": None, best: 0.5, "eps_mse": 0.1},
                  {"vae": "b", "sample_classifier_fd": None, best: 0.4, "eps_mse": 0.2}]
    original = module.load_track_record
    module.load_track_record = lambda: record
    try:
        line = verdict(unmeasured, "no labels")
    finally:
        module.load_track_record = original
    assert line.startswith(f"no verdict (no labels): falling back on {best}, whose rank correlation")
    order = "a < b" if SIGNALS[best][0] else "b < a"  # a has the higher value
    record = record["signals"]
    assert f"ρ = {record[best]['rho']:.2f}" in line and line.endswith(f"{order} (better first)")
    # the shipped record (the 10-configuration meta-study): no signal's interval lies above 0, so no fallback
    assert all(r["low"] <= 0 for r in shipped["signals"].values())
    assert "no measured cheap signal has a track record shown positive" in verdict(unmeasured, "no labels")


def test_seeds_of_one_configuration_are_pooled_before_the_verdict():
    from vaekit.diffusion.page import seed_free_name
    from vaekit.diffusion.verdict import configurations, verdict

    rows = [_row("seed=0", [30.0, 32.0], psnr=25.0), _row("seed=1", [34.0, 36.0], psnr=27.0),
            _row("eqvae_prob=0.5_seed=0", [20.0, 21.0], psnr=24.0), _row("eqvae_prob=0.5_seed=1", [22.0, 25.0], psnr=22.0)]
    for row in rows:
        row["sample_classifier_fd_spread"] = max(row["sample_classifier_fd_seeds"]) - min(row["sample_classifier_fd_seeds"])
    grouped = configurations(rows, lambda row: seed_free_name(row["vae"]))
    assert [g["vae"] for g in grouped] == ["base", "eqvae_prob=0.5"]
    base = grouped[0]
    assert base["members"] == ["seed=0", "seed=1"] and base["psnr"] == 26.0
    assert base["sample_classifier_fd_seeds"] == [30.0, 32.0, 34.0, 36.0] and base["sample_classifier_fd"] == 33.0
    assert base["sample_classifier_fd_spread"] == 6.0  # over every seed of both autoencoders
    line = verdict(grouped)  # two autoencoders × two denoiser seeds: 4 values a side, wholly apart
    assert line.startswith("verdict: eqvae_prob=0.5 generates best by sample_classifier_fd (22, 4 values 20–25); "
                           "against base (33, 4 values 30–36): told apart, p = 0.029")
    assert configurations(rows[:1] + rows[2:3], lambda row: seed_free_name(row["vae"])) is None  # one seed each


def test_validation_logs_the_latent_signals_and_the_high_frequency_ratio(tmp_path):
    import json

    import vaekit
    from vaekit.config import load_config
    from vaekit.metrics.latent import high_frequency_fraction

    config = load_config(None, ["model.name=autoencoder-kl", "model.block_out_channels=[16,16]", "model.layers_per_block=1",
                                "model.norm_num_groups=8", "model.latent_channels=3", "data.name=objects",
                                "data.image_size=16", "data.num_train=32", "data.num_test=40", "loss.perceptual_weight=0",
                                "loss.disc_weight=0", "train.epochs=1", "train.batch_size=16", "train.snapshot_examples=0",
                                "train.progress_bar=false", "train.validation_examples=40", f"output_dir={tmp_path}",
                                "run_name=r", "train.best_metric=equivariance_mse_rotate_90"])
    run = vaekit.train(config, evaluate_at_end=False, explore=False, device="cpu")
    logged = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    validation = [entry["validation"] for entry in logged if "validation" in entry][-1]
    model = vaekit.load_model(run)
    from vaekit.data import build_dataset

    test = build_dataset(config.data, "test")
    x = test.__getitems__(test.spread_indices(40, config.seed))[0] * 2 - 1
    # what a diffusion model trains on: one seeded draw of posterior samples, in the model's normalisation,
    # the same latents for the spectrum and the 90° error (validation's seed is the run's)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        drawn = [model.encode(x[i:i + 16]).sample(generator) for i in range(0, 40, 16)]
        z = torch.cat(drawn)
        assert validation["latent_hf_fraction"] == pytest.approx(high_frequency_fraction(model.scale_latents(z)),
                                                                 rel=1e-5)
        turned = torch.cat([model.decode(torch.rot90(d, 1, (-2, -1))).clamp(-1, 1) for d in drawn])
    expected = (turned - torch.rot90(x, 1, (-2, -1))).double().pow(2).mean().item()
    assert validation["equivariance_mse_rotate_90"] == pytest.approx(expected, rel=1e-5)
    # the report's function, asked for what validation logs: one encode and one decode per batch, nothing thrown away
    from vaekit.metrics.latent import latent_signals

    calls = {"encode": 0, "decode": 0}
    encode, decode = model.encode, model.decode
    model.encode = lambda t: (calls.__setitem__("encode", calls["encode"] + 1), encode(t))[1]
    model.decode = lambda t: (calls.__setitem__("decode", calls["decode"] + 1), decode(t))[1]
    signals = latent_signals(model, x, transforms=("rotate_90",), seed=config.seed)
    assert calls == {"encode": 3, "decode": 3} and set(signals) == {"latent_hf_fraction", "equivariance_mse_rotate_90"}
    assert signals["latent_hf_fraction"] == pytest.approx(validation["latent_hf_fraction"], rel=1e-6)
    assert 0 < validation["hf_energy_ratio"] < 10
    assert "equivariance_mse_scale_0.5" not in validation  # the meta-study did not find it predictive


@pytest.mark.slow
def test_the_arbiter_tells_a_latent_space_from_its_scrambled_copy(tmp_path, capsys):
    """The sanity check of the arbiter: the same autoencoder, once as it is and once with its latent positions
    permuted (identical reconstructions, no spatial structure), each diffused with four seeds; the decoded
    samples' Fréchet distance in the judge's features must rank the original first, told apart by the
    permutation test (4 against 4 wholly apart: p = 2/70). Reconstruction cannot tell them apart (the same PSNR), nor can signals that a permutation of
    positions leaves unchanged (nearest-neighbour interpolations)."""
    import json

    import vaekit
    from vaekit.cli import main
    from vaekit.config import load_config

    # f = 2: 8 × 8 latents at 16². At f = 4 (4 × 4 latents) the denoiser's receptive field covers the whole
    # latent, a fixed permutation is a relabelling it can learn, and the control damages nothing
    config = load_config(None, ["model.name=autoencoder-kl", "model.block_out_channels=[32,32]",
                                "model.layers_per_block=1", "model.norm_num_groups=16", "model.latent_channels=4",
                                "data.name=objects", "data.image_size=16", "data.num_train=2400", "data.num_test=64",
                                "loss.perceptual_weight=0", "loss.disc_weight=0", "train.epochs=1", "train.batch_size=16",
                                "train.snapshot_examples=0", "train.progress_bar=false", f"output_dir={tmp_path}",
                                "run_name=ae"])
    run = vaekit.train(config, evaluate_at_end=False, explore=False, device="cpu")
    code = main(["diffusability", str(run), "--control", "--data", "objects", "--images", "500", "--resolution", "16", "--min-latent-side", "8",
                 "--steps", "150", "--batch-size", "32", "--seeds", "0,1,2,3", "--samples", "120", "--dinov2", "",
                 "-o", str(tmp_path / "out")])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("verdict: ae generates best by sample_classifier_fd") and "told apart, p = 0.029" in printed[0]
    assert printed[1].startswith("judge: a classifier of 10 classes trained on 10,000 objects") and "held-out accuracy" in printed[1]
    good, damaged = json.loads((tmp_path / "out" / "diffusability.json").read_text())["rows"]
    assert damaged["vae"] == "ae-permuted" and good["psnr"] == damaged["psnr"]
    assert max(good["sample_classifier_fd_seeds"]) < min(damaged["sample_classifier_fd_seeds"])
    assert good["interpolation_fd"] == pytest.approx(damaged["interpolation_fd"], rel=1e-5)
    assert "interpolation_fd" in printed[0].split("no difference: ")[1]


@pytest.mark.slow
def test_the_meta_study_gives_each_signal_its_rank_correlation_with_the_arbiter(tmp_path, capsys, monkeypatch):
    """configs/study-signals.yaml in miniature: four configurations (two seeds of one of them), each trained,
    diffused and scored; the report's table gives each cheap signal's Spearman ρ with the arbiter over the
    configurations (means over their seeds), which scipy recomputes from the rows."""
    import json

    import yaml

    from vaekit.cli import main
    from vaekit.diffusion.page import seed_free_name
    from vaekit.diffusion.verdict import SIGNALS

    study = yaml.safe_load(open("configs/study-signals.yaml"))
    study["model"].update(block_out_channels=[16, 16], norm_num_groups=8, sample_size=16)
    study["data"].update(image_size=16, num_train=480)
    study["train"].update(batch_size=16)
    study["sweep"] = [{"seed": 0, "loss.kl_weight": 1e-6, "model.latent_channels": 2},
                      {"seed": 1, "loss.kl_weight": 1e-6, "model.latent_channels": 2},
                      {"seed": 0, "loss.kl_weight": 1e-2, "model.latent_channels": 2},
                      {"seed": 0, "loss.kl_weight": 1e-6, "model.latent_channels": 4},
                      {"seed": 0, "loss.kl_weight": 1e-6, "model.latent_channels": 4,
                       "model.block_out_channels": [16, 16, 16]}]
    study["diffusability"].update(resolution=16, min_latent_side=4, images=300, steps=30, samples=40)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # FD_DINOv2 unavailable at once
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["diffusability", str(tmp_path / "study.yaml"), "-o", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith("verdict: ")
    report = json.loads((tmp_path / "out" / "diffusability.json").read_text())
    record, rows = report["track_record"], report["rows"]
    assert record["arbiter"] == "sample_classifier_fd" and len(record["groups"]) == 4
    assert set(record["signals"]) == {name for name in SIGNALS if all(row.get(name) is not None for row in rows)}
    for name, r in record["signals"].items():
        groups = {}
        for row in rows:
            groups.setdefault(seed_free_name(row["vae"]), []).append(row)
        signal = [np.mean([(-1 if SIGNALS[name][0] else 1) * row[name] for row in g]) for g in groups.values()]
        arbiter = [np.mean([row["sample_classifier_fd"] for row in g]) for g in groups.values()]
        expected = stats.spearmanr(signal, arbiter).statistic
        assert r["rho"] == pytest.approx(expected, abs=1e-9) or (math.isnan(r["rho"]) and math.isnan(expected))
        assert math.isnan(r["low"]) or r["low"] <= r["high"]
    assert "Which cheap signals predict" in (tmp_path / "out" / "diffusability.html").read_text()


def test_the_track_record_also_correlates_within_one_downsampling_factor():
    """Across factors a signal can rank f = 8 below f = 4 and nothing else; the record within each factor
    with four or more configurations is scipy's Spearman ρ over that factor's configurations alone."""
    from vaekit.diffusion.page import seed_free_name
    from vaekit.diffusion.verdict import SIGNALS, track_record

    rng = np.random.default_rng(0)
    rows = []
    for i, (factor, seeds) in enumerate([(4, 2), (4, 1), (4, 1), (4, 2), (4, 1), (8, 1), (8, 2)]):
        for seed in range(seeds):
            rows.append({"vae": f"c{i}_seed={seed}", "downsampling_factor": factor,
                         "sample_classifier_fd": float(rng.uniform(10, 50)),
                         "latent_hf_fraction": float(rng.uniform(0, 1))})
    record = track_record(rows, lambda row: seed_free_name(row["vae"]), "sample_classifier_fd")
    assert set(record["within_factor"]) == {"4"}  # f = 8 has two configurations: no record
    within = record["within_factor"]["4"]
    assert within["groups"] == ["c0", "c1", "c2", "c3", "c4"]
    groups = {}
    for row in rows:
        if row["downsampling_factor"] == 4:
            groups.setdefault(seed_free_name(row["vae"]), []).append(row)
    higher = SIGNALS["latent_hf_fraction"][0]
    signal = [np.mean([(-1 if higher else 1) * r["latent_hf_fraction"] for r in g]) for g in groups.values()]
    arbiter = [np.mean([r["sample_classifier_fd"] for r in g]) for g in groups.values()]
    expected = stats.spearmanr(signal, arbiter).statistic
    assert within["signals"]["latent_hf_fraction"]["rho"] == pytest.approx(expected, abs=1e-9)
    from vaekit.diffusion.page import _track_record_extra

    page = _track_record_extra(record)  # the report page shows the within-factor ρ beside the overall one
    column = page["columns"].index("within f = 4")
    hf_row = next(row for row in page["rows"] if row[0] == "latent_hf_fraction")
    assert hf_row[column].startswith(f"{expected:.2f} (")
    one_factor = [row for row in rows if row["downsampling_factor"] == 4]
    assert "within_factor" not in track_record(one_factor, lambda row: seed_free_name(row["vae"]),
                                               "sample_classifier_fd")
