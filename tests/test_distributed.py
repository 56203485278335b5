"""Several processes on CPU (gloo): training and latent export agree with one process."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vaekit
from vaekit.config import load_config
from vaekit.errors import VaekitError
from vaekit.runs import read_log
from vaekit.io.latents import shard_name
from vaekit.latents import LatentDataset, export_latents
from vaekit.training import train


MLP = ["data.name=digits", "model.hidden_dims=[64]", "model.latent_dim=4", "train.epochs=2", "train.batch_size=32",
       "train.checkpoint_every=30", "train.log_every=10", "train.snapshot_examples=0", "train.progress_bar=false",
       "seed=3"]


def vaekit_cli(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vaekit", "-q", *args]
    if processes > 1:
        command.append(f"--num-processes={processes}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_log(run_dir) if "loss" in r]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def assert_weights_close(a, b, atol):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"weights differ by {worst}"


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mp")
    vaekit_cli("train", *MLP, f"output_dir={out}", "run_name=two", "--no-explore", "--no-eval", processes=2)
    return out / "two"


@pytest.mark.slow
def test_two_processes_follow_one_process_with_the_same_global_batch(two_process_run, tmp_path):
    """Each process takes half of every global batch of 32, the noise per example is the same, the
    gradients are averaged: the run is the single-process run up to float rounding (stated: 1e-5)."""
    one = train(load_config(None, MLP + [f"output_dir={tmp_path}", "run_name=one"]), evaluate_at_end=False,
                explore=False)
    np.testing.assert_allclose(losses(two_process_run), losses(one), rtol=1e-5)
    assert_weights_close(two_process_run, one, atol=1e-5)
    # Only the main process wrote the run directory's files.
    assert sorted(p.name for p in two_process_run.iterdir()) == sorted(p.name for p in one.iterdir())


@pytest.mark.slow
def test_a_two_process_run_resumes_exactly_under_two_processes(two_process_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(two_process_run, run)
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-00000090", "step-00000094"]
    shutil.rmtree(checkpoints[-1])  # as if killed after the checkpoint at step 90
    shutil.rmtree(run / "model")
    vaekit_cli("train", "--resume", str(run), "--no-explore", "--no-eval", processes=2)
    assert losses(run) == losses(two_process_run)
    assert_weights_close(run, two_process_run, atol=0.0)  # the same arithmetic: bitwise


@pytest.mark.slow
def test_a_resume_on_another_process_count_says_what_changes(two_process_run, tmp_path, caplog):
    run = tmp_path / "on-one"
    shutil.copytree(two_process_run, run)
    shutil.rmtree(sorted((run / "checkpoints").iterdir())[-1])
    with caplog.at_level("INFO", logger="vaekit"):
        train(resume=run, evaluate_at_end=False, explore=False)
    assert "trained on 2 process(es) and resumes on 1" in caplog.text
    assert_weights_close(run, two_process_run, atol=1e-5)


@pytest.mark.slow
def test_gan_training_with_synchronised_batch_norm_follows_one_process(tmp_path):
    """kl-f8-tiny with the PatchGAN from step 0: the discriminator's BatchNorm over the global batch, its
    gradients and the adaptive weight averaged. GAN training amplifies rounding (Adam's first steps
    turn tiny gradient differences into ±lr): the first step agrees to float32 rounding, and all four
    to 1 % (measured: 5e-7 at the first step, 7e-3 at most, in the adaptive weight of the last)."""
    args = ["model.name=kl-f8-tiny", "data.name=photos", "data.crop_size=32", "data.num_train=32",
            "loss.name=lpips-gan", "loss.perceptual_weight=0", "loss.disc_start=0", "train.epochs=1",
            "train.batch_size=8", "train.log_every=1", "train.snapshot_examples=0", "train.progress_bar=false",
            f"output_dir={tmp_path}"]
    vaekit_cli("train", *args, "run_name=two", "--no-explore", "--no-eval", processes=2)
    one = train(load_config(None, args + ["run_name=one"]), evaluate_at_end=False, explore=False)
    records = [[r for r in read_log(run) if "loss" in r] for run in (tmp_path / "two", one)]
    assert len(records[0]) == len(records[1]) == 4
    for key in ("loss", "d_loss", "d_weight"):
        two, single = [r[key] for r in records[0]], [r[key] for r in records[1]]
        np.testing.assert_allclose(two[0], single[0], rtol=1e-5)
        np.testing.assert_allclose(two, single, rtol=1e-2)


NONFINITE_ON_ONE_PROCESS = textwrap.dedent("""
    import json, os, sys
    from vaekit.losses import ELBOLoss
    from vaekit.config import load_config
    from vaekit.training import train
    original, calls = ELBOLoss.forward, {"n": 0}
    def forward(self, *args, **kwargs):
        loss, logs = original(self, *args, **kwargs)
        calls["n"] += 1
        if os.environ["RANK"] == "1" and calls["n"] == 3:  # this process alone sees a NaN loss
            return loss, {**logs, "loss": float("nan")}
        return loss, logs
    ELBOLoss.forward = forward
    run = train(load_config(None, sys.argv[1:]), evaluate_at_end=False, explore=False)
    if os.environ["RANK"] == "0":
        print("RESULT", json.dumps(json.loads((run / "metrics.json").read_text())["train"]))
""")


@pytest.mark.slow
def test_a_nonfinite_step_on_one_process_is_skipped_by_all(tmp_path):
    """Rank 1's loss is NaN at its third step (its gradients, averaged with rank 0's, stay finite): every
    process skips that step — the flag is agreed — and the run ends normally with one skipped step; rank 0,
    which saw nothing wrong itself, counts it too."""
    script = tmp_path / "nan.py"
    script.write_text(NONFINITE_ON_ONE_PROCESS)
    args = [a for a in MLP if not a.startswith("train.epochs")] + ["train.epochs=1", f"output_dir={tmp_path}"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(script), *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert metrics["skipped_nonfinite_steps"] == 1 and metrics["steps"] == 47


GLOBAL_BN_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from vaekit.training.distributed import GlobalBatchNorm2d
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    x = (torch.randn(6, 5, 4, 3) * 3 + 7).requires_grad_()
    weight = torch.randn(6, 5, 4, 3)
    norm = GlobalBatchNorm2d(5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5); norm.bias.uniform_(-1, 1)
    out = norm(x[rank * 3:(rank + 1) * 3])
    (out * weight[rank * 3:(rank + 1) * 3]).sum().backward()
    grads = [torch.zeros_like(x.grad) for _ in range(2)]
    dist.all_gather(grads, x.grad)
    outs = [torch.zeros_like(out) for _ in range(2)]
    dist.all_gather(outs, out.detach().contiguous())
    if rank == 0:
        ref = torch.nn.BatchNorm2d(5)
        ref.load_state_dict({k: v for k, v in norm.state_dict().items() if k not in ("running_mean", "running_var", "num_batches_tracked")}, strict=False)
        x2 = x.detach().clone().requires_grad_()
        ref_out = ref(x2)
        (ref_out * weight).sum().backward()
        torch.testing.assert_close(torch.cat(outs), ref_out.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sum(grads), x2.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(norm.running_mean, ref.running_mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(norm.running_var, ref.running_var, atol=1e-5, rtol=1e-5)
        print("GLOBAL BN OK")
    dist.barrier()
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_global_batch_norm_on_two_processes_equals_batch_norm_on_the_whole_batch(tmp_path):
    script = tmp_path / "bn.py"
    script.write_text(GLOBAL_BN_SCRIPT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(script)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "GLOBAL BN OK" in result.stdout, result.stderr[-3000:]


# ------------------------------------------------------------------------------------------ export


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """14 JPEG/PNG files of two sizes in sub-folders, and two broken files."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(14):
        size = (24, 16) if i % 3 else (16, 16)
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        image = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        image.save(folder / f"img{i:02d}.{'jpg' if i % 4 else 'png'}")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "a" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    torch.manual_seed(0)
    model = vaekit.create_model("autoencoder-kl", block_out_channels=(16, 32), layers_per_block=1,
                                norm_num_groups=8, latent_channels=3, scaling_factor=0.5).eval()
    path = tmp_path_factory.mktemp("model") / "m"
    vaekit.save_model(model, path)
    return path


def shards(directory) -> dict:
    return {p.name: load_file(p) for p in sorted(directory.glob("shard-*.safetensors"))}


def test_export_skips_bad_files_lists_them_and_round_trips(image_folder, small_model, tmp_path):
    model = vaekit.load_model(small_model).eval()
    out = tmp_path / "latents"
    manifest = export_latents(model, str(image_folder), out, shard_size=5, batch_size=3)
    assert manifest["count"] == 16 and manifest["encoded"] == 14 and len(manifest["shards"]) == 4
    assert sorted(s["source"] for s in manifest["skipped"]) == ["a/empty.jpg", "b/broken.png"]
    data = LatentDataset(out)
    assert len(data) == 14 and data.norm.scaling_factor == 0.5
    from vaekit.io.images import read_image

    for item in (data[0], data[7], data[13]):
        x = read_image(image_folder / item["source"])
        assert item["size"] == tuple(x.shape[2:])
        with torch.no_grad():
            posterior = model.encode(x)
        torch.testing.assert_close(item["latent"], model.scale_latents(posterior.mean)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(item["logvar"], posterior.logvar[0] + 2 * np.log(0.5), atol=1e-5, rtol=1e-5)
    # Through a DataLoader with a worker process (the shards are reopened there).
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1)
    assert [item["index"] for item in loader] == [item["index"] for item in data]


@pytest.mark.slow
def test_two_process_export_equals_one_process_item_by_item(image_folder, small_model, tmp_path):
    common = ["export-latents", "--model", str(small_model), "--data", str(image_folder), "--shard-size", "4",
              "--resolution", "16"]
    vaekit_cli(*common, "-o", str(tmp_path / "one"))
    vaekit_cli(*common, "-o", str(tmp_path / "two"), processes=2)
    one, two = shards(tmp_path / "one"), shards(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 4
    for name in one:
        assert one[name].keys() == two[name].keys()
        for key in one[name]:
            torch.testing.assert_close(one[name][key], two[name][key], atol=1e-6, rtol=0)
    manifests = [json.loads((tmp_path / run / "manifest.json").read_text()) for run in ("one", "two")]
    assert manifests[1]["processes"] == 2
    assert {k: v for k, v in manifests[0].items() if k != "processes"} == \
        {k: v for k, v in manifests[1].items() if k != "processes"}


def test_an_interrupted_export_resumes_without_re_encoding(image_folder, small_model, tmp_path):
    model = vaekit.load_model(small_model).eval()
    out = tmp_path / "latents"
    export_latents(model, str(image_folder), out, shard_size=3)
    complete = shards(out)
    # A kill: the last shards never written, one torn temporary file left behind, no manifest.
    kept = out / shard_name(1)
    kept_time = kept.stat().st_mtime_ns
    for k in (2, 4, 5):
        (out / shard_name(k)).unlink()
    (out / f".{shard_name(4)}.abc.tmp").write_bytes(b"torn")
    (out / "manifest.json").unlink()
    with pytest.raises(VaekitError, match="not a finished latent export"):
        LatentDataset(out)
    encoded = []
    original = model.encode
    model.encode = lambda x, labels=None: encoded.append(len(x)) or original(x)
    export_latents(model, str(image_folder), out, shard_size=3)
    # Exactly the readable images of shards 2, 4 and 5 were encoded again, nothing else.
    assert sum(encoded) == sum(sum(key.startswith("mean.") for key in complete[shard_name(k)]) for k in (2, 4, 5))
    assert kept.stat().st_mtime_ns == kept_time
    resumed = shards(out)
    assert resumed.keys() == complete.keys()
    for name in complete:
        for key in complete[name]:
            torch.testing.assert_close(resumed[name][key], complete[name][key], atol=0, rtol=0)
    assert len(LatentDataset(out)) == 14


def test_resuming_with_other_settings_is_refused(image_folder, small_model, tmp_path):
    model = vaekit.load_model(small_model).eval()
    export_latents(model, str(image_folder), tmp_path / "x", shard_size=4)
    with pytest.raises(VaekitError, match="shard_size"):
        export_latents(model, str(image_folder), tmp_path / "x", shard_size=5)


@pytest.mark.parametrize("version", ["before model_class and patch_size", "with patch_size 1 recorded"])
def test_an_export_interrupted_under_an_earlier_version_resumes(version, image_folder, small_model, tmp_path):
    """Its export.json lacks fields added since (they take their defaults, model_class is not compared) or records
    patch_size 1, which the current spec leaves out; a patch_size it would change is still refused."""
    model = vaekit.load_model(small_model).eval()
    out = tmp_path / "latents"
    export_latents(model, str(image_folder), out, shard_size=3)
    spec = json.loads((out / "export.json").read_text())
    if version == "with patch_size 1 recorded":
        spec["patch_size"] = 1
    else:
        del spec["model_class"]
    (out / "export.json").write_text(json.dumps(spec))
    (out / shard_name(2)).unlink()
    (out / "manifest.json").unlink()
    assert export_latents(model, str(image_folder), out, shard_size=3)["encoded"] == 14
    (out / "export.json").write_text(json.dumps({**spec, "patch_size": 2}))
    with pytest.raises(VaekitError, match=r"\(patch_size differ\)"):
        export_latents(model, str(image_folder), out, shard_size=3)


def test_folded_latents_get_a_format_readers_of_the_first_refuse(image_folder, small_model, tmp_path, monkeypatch):
    """``vaekit-latents/1`` readers know nothing of patch_size: an export of folded latents is
    ``vaekit-latents/2`` (readable here, as /1 still is), and a latents file keeps its folded normalisation
    under a key they do not read."""
    from safetensors import safe_open

    from vaekit.io.latents import load_latents, save_latents
    from vaekit.models.latent_scale import LatentNorm

    model = vaekit.load_model(small_model).eval()
    plain = export_latents(model, str(image_folder), tmp_path / "plain", shard_size=7)
    assert plain["format"] == "vaekit-latents/1" and "patch_size" not in plain
    folded_norm = LatentNorm(0.5, patch_size=2)
    monkeypatch.setattr(type(model), "latent_norm", property(lambda self: folded_norm))
    folded = export_latents(model, str(image_folder), tmp_path / "folded", shard_size=7)
    assert (folded["format"], folded["patch_size"], folded["latent_channels"]) == ("vaekit-latents/2", 2, 12)
    with safe_open(tmp_path / "folded" / shard_name(0), "pt") as f:
        assert f.metadata()["format"] == "vaekit-latents/2"
    data = LatentDataset(tmp_path / "folded")
    assert data.norm == folded_norm and data[0]["latent"].shape[0] == 12
    assert LatentDataset(tmp_path / "plain").norm == LatentNorm(0.5)
    manifest = json.loads((tmp_path / "folded" / "manifest.json").read_text())
    (tmp_path / "folded" / "manifest.json").write_text(json.dumps({**manifest, "format": "vaekit-latents/9"}))
    with pytest.raises(VaekitError, match="not a vaekit-latents/1 or vaekit-latents/2 manifest"):
        LatentDataset(tmp_path / "folded")

    save_latents(tmp_path / "z.safetensors", [torch.zeros(12, 2, 2)], ["a.png"], [(8, 8)], folded_norm)
    with safe_open(tmp_path / "z.safetensors", "pt") as f:
        assert "norm" not in f.metadata()  # what readers from before patch_size read, ignoring patch_size
    assert load_latents(tmp_path / "z.safetensors").norm == folded_norm


def test_export_reads_a_hugging_face_dataset(small_model, tmp_path):
    import datasets

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(5)]
    rows = images + [{"bytes": b"not an image", "path": None}]
    table = datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))
    table.save_to_disk(str(tmp_path / "hf"))
    model = vaekit.load_model(small_model).eval()
    manifest = export_latents(model, str(tmp_path / "hf"), tmp_path / "out", shard_size=2)
    data = LatentDataset(tmp_path / "out")
    assert manifest["encoded"] == 5 and [d["source"] for d in data] == [f"train[{i}]" for i in range(5)]
    assert [s["source"] for s in manifest["skipped"]] == ["train[5]"]
    assert manifest["skipped"][0]["reason"].startswith("cannot read train[5] as an image")
    assert data[0]["latent"].shape == (3, 8, 8)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cvae", "mlp-ae"])
def test_every_model_family_trains_on_two_processes_like_on_one(model, tmp_path):
    args = [a for a in MLP if not a.startswith("train.epochs")] + ["train.epochs=1", f"model.name={model}",
                                                                   f"output_dir={tmp_path}"]
    vaekit_cli("train", *args, "run_name=two", "--no-explore", "--no-eval", processes=2)
    one = train(load_config(None, args + ["run_name=one"]), evaluate_at_end=False, explore=False)
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(one), rtol=1e-5)
    assert_weights_close(tmp_path / "two", one, atol=1e-5)


def test_the_process_count_option_relaunches_without_itself(capsys):
    from vaekit.cli import _without_num_processes, main

    assert _without_num_processes(["train", "--num-processes", "2", "a=b"]) == ["train", "a=b"]
    assert _without_num_processes(["export-latents", "--num-processes=3", "-o", "x"]) == ["export-latents", "-o", "x"]
    assert main(["train", "--num-processes", "0"]) == 1
    assert "--num-processes must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_vq_codebook_updates_on_two_processes_follow_one_process(tmp_path):
    """Moving averages and dead-code restarts from the global batch: counts and sums are summed over the
    processes, the restart candidates gathered in global order and drawn from the shared generator, so
    two processes restart the same codes at the same vectors as one process on the same global batch."""
    args = ["model.name=vq", "model.block_out_channels=[8,16]", "model.layers_per_block=1", "model.norm_num_groups=8",
            "model.latent_channels=4", "model.num_embeddings=64", "model.codebook_ema_decay=0.9",
            "model.dead_code_threshold=0.995", "data.name=photos", "data.crop_size=8", "data.num_train=32",
            "loss.perceptual_weight=0", "loss.disc_weight=0", "train.max_steps=6", "train.batch_size=8",
            "train.log_every=1", "train.snapshot_examples=0", "train.progress_bar=false", "train.validate_every=1000",
            "train.validation_examples=4", "train.calibration_images=4", f"output_dir={tmp_path}"]
    vaekit_cli("train", *args, "run_name=two", "--no-explore", "--no-eval", processes=2)
    one = train(load_config(None, args + ["run_name=one"]), evaluate_at_end=False, explore=False)
    records = [[r for r in read_log(run) if "loss" in r] for run in (one, tmp_path / "two")]
    restarts = [[r["codes_restarted"] for r in run] for run in records]
    assert sum(restarts[0]) > 0 and restarts[0] == restarts[1]
    np.testing.assert_allclose([r["loss"] for r in records[1]], [r["loss"] for r in records[0]], rtol=1e-5)
    # The same codes restarted at the same vectors: the codebooks agree to float32 rounding of sums over
    # the 512 matched vectors of a step (≲ 512 · 2⁻²⁴ ≈ 3e-5 at this scale); another choice of rows would
    # move codes by ~0.1. (The decoder's weights are compared by the losses: Adam's first steps turn
    # rounding-level gradient differences of near-zero gradients into ±lr, as in the GAN test above.)
    codebooks = [weights(run)["quantize.embedding.weight"] for run in (one, tmp_path / "two")]
    assert (codebooks[0] - codebooks[1]).abs().max().item() < 1e-4


@pytest.mark.slow
def test_the_denoiser_trains_on_two_processes_as_on_one(tmp_path):
    """Stage B through the same machinery: the timesteps and noise of each global batch are drawn once and
    shared out, so two processes follow one up to float rounding."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(32):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    torch.manual_seed(0)
    vae = vaekit.create_model("autoencoder-kl", block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8,
                              latent_channels=3)
    vae.config.scaling_factor = 5.0
    export_latents(vae.eval(), str(tmp_path / "images"), tmp_path / "latents")
    args = ["diffusion", "train", str(tmp_path / "latents"), "model.block_out_channels=[16,32]",
            "model.norm_num_groups=8", "model.attention_levels=[]", "train.max_steps=4", "train.batch_size=8",
            "train.snapshot_examples=0", "train.progress_bar=false", "--no-eval", "--no-explore",
            f"output_dir={tmp_path}"]
    vaekit_cli(*args, "run_name=one")
    vaekit_cli(*args, "run_name=two", processes=2)
    assert_weights_close(tmp_path / "one", tmp_path / "two", atol=1e-4)  # measured: 1.05e-5 after 4 AdamW steps
    vaekit_cli(*args, "run_name=other-noise", "seed=1")  # what "not the same run" looks like, for scale
    wa, wb = weights(tmp_path / "one"), weights(tmp_path / "other-noise")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) > 1e-3
