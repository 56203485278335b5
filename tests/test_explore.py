import csv
import math
import re
import shutil
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit.cli import main
from vaekit.config import load_config
from vaekit.data import build_dataset
from vaekit.explore import (apply_attribute, attribute_vector, class_centroids, encode_dataset, explore_run,
                            interpolate, latent_map, latent_walk, layer_table, lerp, nearest_neighbours,
                            parameter_count, slerp, smoothness, traverse)
from vaekit.viz.grids import grid_size, save_grid

from conftest import tiny_overrides


def _train(tmp_path, **extra):
    config = load_config(None, tiny_overrides(tmp_path, **{"explore.map_examples": 48, "explore.num_examples": 5,
                                                           "explore.walk_frames_per_class": 3, **extra}))
    return vaekit.train(config, explore=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A shapes VAE with a 2-D latent, explored once."""
    run_dir = _train(tmp_path_factory.mktemp("explore"), **{"model.latent_dim": 2})
    explore_run(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def model_and_data(run):
    config = vaekit.runs.read_run_config(run)
    return vaekit.load_model(run), build_dataset(config.data, "test")


def test_explore_writes_every_figure_and_a_report_that_references_only_existing_files(run):
    expected = {"reconstructions.png", "samples.png", "interpolation_linear.png", "interpolation_slerp.png",
                "latent_map.png", "traversals.png", "progression.png", "latent_walk.gif", "neighbours.png",
                "arithmetic.png", "collapse.png", "losses.png", "validation.png", "figures.json", "explorer.html"}
    assert {p.name for p in (run / "figures").iterdir()} == expected
    html = (run / "report.html").read_text()
    references = re.findall(r'(?:href|src)="([^"]+)"', html)
    local = [r for r in references if not r.startswith("data:")]
    assert len(local) == len(expected) - 2  # every figure; the manifest and the explorer (inline) are not linked
    assert all((run / r).is_file() for r in local)
    assert html.count('src="data:image/') == len(expected) - 2  # embedded: the file opens anywhere
    assert (run / "figures" / "explorer.html").read_text() in html  # the interactive explorer, inline
    assert "http://" not in html and "https://" not in html
    for text in ("Model card", "compression ratio", "negative_elbo", "Resolved config", "interpolation_smoothness"):
        assert text in html


def test_figure_sizes_and_gif_frames(run):
    # Reconstructions: 2 rows of 5 images of 16×16 at scale 4.
    assert Image.open(run / "figures" / "reconstructions.png").size == grid_size(2, 5, 16, 16, 4)
    assert Image.open(run / "figures" / "samples.png").size == grid_size(8, 8, 16, 16, 4)
    frames = iio.imread(run / "figures" / "latent_walk.gif", index=None)
    assert frames.shape[0] == 4 * 3  # 4 classes × 3 frames per leg
    assert frames.shape[1:3] == grid_size(1, 1, 16, 16, 4)[::-1]


def test_explore_is_deterministic(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "figures")
    explore_run(copy)
    for name in ("reconstructions.png", "samples.png", "latent_map.png", "traversals.png", "latent_walk.gif",
                 "neighbours.png", "interpolation_slerp.png"):
        assert np.array_equal(iio.imread(run / "figures" / name, index=None),
                              iio.imread(copy / "figures" / name, index=None)), name


def test_latent_map_of_a_2d_latent_is_the_posterior_means(model_and_data):
    model, test = model_and_data
    stats = encode_dataset(model, test, batch_size=7)
    x, _ = test.__getitems__(list(range(len(test))))
    with torch.no_grad():
        means = model.encode(x).mean
    torch.testing.assert_close(stats.means, means)
    np.testing.assert_array_equal(latent_map(stats.means.numpy(), "latent"), stats.means.numpy())
    assert latent_map(stats.means.numpy(), "pca").shape == (len(test), 2)


def test_interpolation_endpoints_are_the_reconstructions(model_and_data):
    model, test = model_and_data
    x, _ = test.__getitems__([0, 1, 2, 3])
    with torch.no_grad():
        z = model.encode(x).mean
        reconstructions = model.decode(z)
    for method in ("linear", "slerp"):
        strips = interpolate(model, z[:2], z[2:], steps=7, method=method)
        assert strips.shape == (2, 7, 1, 16, 16)
        torch.testing.assert_close(strips[:, 0], reconstructions[:2], atol=1e-6, rtol=0)
        torch.testing.assert_close(strips[:, -1], reconstructions[2:], atol=1e-6, rtol=0)


def test_slerp_keeps_the_norm_between_equal_norm_endpoints_and_lerp_is_straight():
    z0, z1 = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    path = slerp(z0, z1, 5)
    torch.testing.assert_close(path.norm(dim=1), torch.full((5,), 3.0))
    torch.testing.assert_close(path[2], torch.tensor([1.0, 1.0]) * 3 / math.sqrt(2))
    torch.testing.assert_close(lerp(z0, z1, 5)[2], torch.tensor([1.5, 1.5]))
    torch.testing.assert_close(slerp(z0, 2 * z0, 3), lerp(z0, 2 * z0, 3))  # parallel: falls back to lerp


def test_smoothness_is_one_for_even_steps_and_small_for_a_jump():
    even = torch.linspace(0, 1, 6).view(1, 6, 1, 1, 1).expand(1, 6, 1, 2, 2)
    assert smoothness(even) == pytest.approx(1.0)
    jump = torch.zeros(1, 6, 1, 2, 2)
    jump[:, 3:] = 1.0
    assert smoothness(jump) == pytest.approx(1 / 5)


def test_traversal_sets_one_coordinate_per_row(model_and_data):
    model, _ = model_and_data
    base = torch.tensor([0.3, -0.2])
    rows = traverse(model, base, dims=[1, 0], steps=3, extent=2.0)
    with torch.no_grad():
        expected = model.decode(torch.tensor([[0.3, -2.0], [0.3, 0.0], [0.3, 2.0]]))
    torch.testing.assert_close(rows[0], expected)
    assert rows.shape == (2, 3, 1, 16, 16)


def test_nearest_neighbours_match_brute_force():
    means = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    found = nearest_neighbours(means, [3, 17], k=4)
    distances = torch.cdist(means[[3, 17]].double(), means.double())
    distances[0, 3] = distances[1, 17] = math.inf
    np.testing.assert_array_equal(found, distances.argsort(dim=1)[:, :4].numpy())


def test_attribute_vector_and_centroids_are_class_means(model_and_data):
    model, _ = model_and_data
    means = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])
    labels = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(class_centroids(means, labels, 2), torch.tensor([[1.0, 0.0], [0.0, 5.0]]))
    vector = attribute_vector(means, labels, 0, 1, 2)
    torch.testing.assert_close(vector, torch.tensor([-1.0, 5.0]))
    with torch.no_grad():
        torch.testing.assert_close(apply_attribute(model, means[:2], vector, 0, 1), model.decode(means[:2] + vector))


def test_latent_walk_visits_each_centroid(model_and_data):
    model, _ = model_and_data
    centroids = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    frames = latent_walk(model, centroids, frames_per_leg=4)
    assert frames.shape == (12, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(frames[[0, 4, 8]], model.decode(centroids), atol=1e-6, rtol=0)


def test_layer_table_counts_every_parameter(model_and_data):
    model, test = model_and_data
    x, _ = test.__getitems__([0])
    rows = layer_table(model, x)
    assert sum(r["parameters"] for r in rows) == parameter_count(model)
    assert rows[-1]["output_shape"] == [256] and rows[0]["type"] == "Linear"


def test_grid_has_the_computed_size(tmp_path):
    path = save_grid(tmp_path / "g.png", torch.rand(3, 4, 3, 5, 7), scale=2)
    assert Image.open(path).size == grid_size(3, 4, 5, 7, 2)


def test_conditional_autoencoder_and_unlabelled_runs(tmp_path, monkeypatch):
    cvae = _train(tmp_path / "c", **{"model.name": "cvae"})
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn absent (it is an optional extra)
    explore_run(cvae)
    assert (cvae / "figures" / "latent_walk.gif").is_file()
    html = (cvae / "report.html").read_text()
    assert "decoded with the label" in html
    assert "UMAP panel of the latent map</b>: umap-learn is not installed" in html  # listed, not silently gone

    ae = _train(tmp_path / "a", **{"model.name": "mlp-ae"})
    html = explore_run(ae).read_text()
    assert "Samples from the prior (autoencoder)" in html and "why a VAE is needed" in html
    assert "a plain autoencoder has no KL term" in html

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    unlabelled = _train(tmp_path / "u", **{"data.name": "folder", "data.path": str(folder), "data.image_size": 8,
                                          "data.num_train": None, "data.num_test": None})
    html = explore_run(unlabelled).read_text()
    assert "The data has no labels" in html
    assert "latent walk GIF</b>: it visits class centroids, and the data has no labels" in html
    assert "attribute arithmetic</b>: it needs two labelled classes" in html
    assert (unlabelled / "figures" / "latent_map.png").is_file()


def test_exploring_a_stopped_run_uses_its_checkpoint_and_says_so(run, tmp_path):
    copy = tmp_path / "stopped"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "model")
    html = explore_run(copy).read_text()
    assert "has no final model yet" in html and "step-00000024" in html


def test_explore_cli_and_its_errors(run, tmp_path, capsys):
    assert main(["explore", str(run)]) == 0
    assert f"report: {run / 'report.html'}" in capsys.readouterr().out
    (tmp_path / "x").mkdir()
    assert main(["explore", str(tmp_path / "x")]) == 1
    assert "is not a vaekit run directory" in capsys.readouterr().err


def test_sweep_over_two_values_gives_two_rows_of_finite_numbers(tmp_path, capsys):
    overrides = [o for o in tiny_overrides(tmp_path, **{"explore.map_examples": 32, "train.epochs": 2})]
    code = main(["sweep", "model.latent_dim=2,3", *overrides, "-o", str(tmp_path / "sweeps")])
    assert code == 0
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    with open(sweep_dir / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["model.latent_dim"] for row in rows] == ["2", "3"]
    for row in rows:
        for key in ("negative_elbo", "negative_iwae_bound", "reconstruction", "kl", "active_units",
                    "interpolation_smoothness"):
            assert math.isfinite(float(row[key])), key
    html = (sweep_dir / "sweep.html").read_text()
    assert all((sweep_dir / r).is_file() for r in re.findall(r'href="([^"]+)"', html))
    run_report = (sweep_dir / "latent_dim=2" / "report.html").read_text()
    assert "Sweep" in run_report and "model.latent_dim" in run_report


def test_sweep_argument_errors(capsys):
    assert main(["sweep", "train.epochs=2"]) == 1
    assert "nothing to sweep" in capsys.readouterr().err
    assert main(["sweep", "model.latent_dim=2,x"]) == 1
    assert "model.latent_dim must be an integer, got 'x'" in capsys.readouterr().err


def test_an_interrupted_run_stops_the_whole_sweep(tmp_path, monkeypatch):
    import vaekit.training
    from vaekit.sweep import sweep
    from vaekit.training.trainer import TrainingInterrupted

    started = []

    def interrupted(config, **_):  # Ctrl-C during the first run: it saved a checkpoint and stopped
        started.append(config.run_name)
        raise TrainingInterrupted("stopped at step 3 of 10")

    monkeypatch.setattr(vaekit.training, "train", interrupted)
    with pytest.raises(TrainingInterrupted):
        sweep(None, ["model.latent_dim=2,3", *tiny_overrides(tmp_path)], output_dir=str(tmp_path / "sweeps"))
    assert started == ["latent_dim=2"]  # the second run never started
