import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit.errors import TrainingDiverged
from vaekit.losses import ELBOLoss
from vaekit.runs import read_log, read_metrics
from vaekit.training import TrainingInterrupted
from vaekit.io.layout import latest_checkpoint, list_checkpoints


def train(*args, **kwargs):
    """The trainer without the figures (tests/test_explore.py covers those)."""
    return vaekit.train(*args, explore=False, **kwargs)


def weights(run_dir):
    return load_file(run_dir / "model" / "model.safetensors")


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def log_records(run_dir):
    """The training records of the log (validation records left out)."""
    return [r for r in read_log(run_dir) if "loss" in r]


def test_training_lowers_the_loss_and_writes_a_complete_run_directory(tiny):
    run = train(tiny(**{"train.epochs": 6}))
    records = log_records(run)
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]
    assert (run / "config.yaml").is_file() and (run / "model" / "config.json").is_file()
    metrics = read_metrics(run)
    assert metrics["train"]["steps"] == 6 * 8 and metrics["train"]["skipped_nonfinite_steps"] == 0
    test = metrics["test"]
    assert test["negative_elbo"] == pytest.approx(test["reconstruction"] + test["kl"])
    assert test["negative_iwae_bound"] < test["negative_elbo"]
    assert len(test["kl_per_dim"]) == 3
    # The resolved config records what came from the data.
    assert "input_shape:\n  - 1\n  - 16\n  - 16" in (run / "config.yaml").read_text()
    assert len(list_checkpoints(run / "checkpoints")) == 2  # keep_checkpoints


def _stop_at_call(monkeypatch, call, action):
    original = ELBOLoss.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ELBOLoss, "forward", forward)


def test_resume_after_ctrl_c_gives_bitwise_identical_weights(tiny, monkeypatch):
    reference = train(tiny(run_name="reference"))
    _stop_at_call(monkeypatch, 11, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted, match="stopped at step 11 of 24"):
        train(tiny(run_name="stopped"))
    monkeypatch.undo()
    run = reference.parent / "stopped"
    assert latest_checkpoint(run / "checkpoints").name == "step-00000011"
    train(resume=run)
    assert_same_weights(reference, run)
    assert [r["step"] for r in log_records(run)] == [r["step"] for r in log_records(reference)]


def test_resume_after_a_crash_restarts_from_the_last_periodic_checkpoint(tiny, monkeypatch):
    reference = train(tiny(run_name="reference", **{"model.name": "cvae", "train.kl_warmup_steps": 10}))

    def crash():
        raise RuntimeError("simulated power cut")

    _stop_at_call(monkeypatch, 13, crash)
    with pytest.raises(RuntimeError, match="power cut"):
        train(tiny(run_name="crashed", **{"model.name": "cvae", "train.kl_warmup_steps": 10}))
    monkeypatch.undo()
    run = reference.parent / "crashed"
    assert latest_checkpoint(run / "checkpoints").name == "step-00000010"  # checkpoint_every=5
    train(resume=run)
    assert_same_weights(reference, run)
    assert read_metrics(run)["test"] == read_metrics(reference)["test"]


def test_a_half_written_checkpoint_is_never_picked_up(tiny):
    run = train(tiny())
    (run / "checkpoints" / ".tmp-step-00000099-1").mkdir()
    assert latest_checkpoint(run / "checkpoints").name == "step-00000024"


def _poison_loss(monkeypatch, bad_call, value):
    """Make the loss of the calls for which ``bad_call(n)`` holds (n counts from 1) equal ``value``."""
    original = ELBOLoss.forward
    calls = {"n": 0}

    def forward(self, x, output, kl_weight=None):
        calls["n"] += 1
        loss, logs = original(self, x, output, kl_weight)
        if bad_call(calls["n"]):
            loss, logs = loss * value, {**logs, "loss": value}
        return loss, logs

    monkeypatch.setattr(ELBOLoss, "forward", forward)


def test_nonfinite_steps_are_skipped_and_counted(tiny, monkeypatch):
    _poison_loss(monkeypatch, lambda n: n in (3, 4, 9), float("nan"))
    run = train(tiny())
    assert read_metrics(run)["train"]["skipped_nonfinite_steps"] == 3
    assert all(torch.isfinite(w).all() for w in weights(run).values())


def test_consecutive_nonfinite_steps_stop_the_run_and_point_to_the_last_checkpoint(tiny, monkeypatch):
    _poison_loss(monkeypatch, lambda n: n > 7, float("inf"))
    with pytest.raises(TrainingDiverged) as info:
        train(tiny(run_name="diverged", **{"train.max_nonfinite_steps": 3}))
    message = str(info.value)
    assert "stopped at step 10" in message and "non-finite for 3 consecutive steps" in message
    assert "step-00000005" in message and "--resume" in message


def test_nan_in_the_data_is_caught_too(tiny, monkeypatch):
    from vaekit.data import shapes

    original = shapes.make_shapes

    def with_nan(*args):
        images, labels = original(*args)
        images[:] = float("nan")
        return images, labels

    monkeypatch.setattr(shapes, "make_shapes", with_nan)
    with pytest.raises(TrainingDiverged, match="No checkpoint was written yet"):
        train(tiny(**{"train.max_nonfinite_steps": 2}))


def test_kl_warmup_rises_linearly_to_beta(tiny):
    run = train(tiny(**{"model.name": "beta-vae", "train.kl_warmup_steps": 16, "train.log_every": 1}))
    weights_by_step = {r["step"]: r["kl_weight"] for r in log_records(run)}
    assert weights_by_step[1] == 0.0  # the first step runs at step count 0
    assert weights_by_step[9] == pytest.approx(4.0 * 8 / 16)
    assert weights_by_step[20] == 4.0


def test_autoencoder_run_reports_no_likelihood(tiny):
    metrics = read_metrics(train(tiny(**{"model.name": "mlp-ae"})))["test"]
    assert "negative_elbo" not in metrics and metrics["mse"] < 0.2


def test_tensorboard_gets_training_and_validation_scalars(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny(**{"train.tensorboard": "true"}))
    events = EventAccumulator(str(next(run.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/kl", "validation/negative_elbo", "validation/mse"} <= tags
    assert [e.step for e in events.Scalars("validation/negative_elbo")] == [8, 16, 24]
    assert "validation/reconstructions" in events.Tags()["images"]


def test_model_of_a_run_loads_from_the_run_directory(tiny):
    run = train(tiny(**{"train.epochs": 1}))
    model = vaekit.load_model(run)
    assert model.encode(torch.rand(2, 1, 16, 16)).mean.shape == (2, 3)


def test_gradient_accumulation_equals_the_larger_batch(tiny):
    """Two micro-batches of 16 make the step of one batch of 32 (a deterministic model: no noise)."""
    common = {"model.name": "mlp-ae", "train.epochs": 2, "train.snapshot_examples": 0}
    big = train(tiny(run_name="big", **common, **{"train.batch_size": 32}))
    small = train(tiny(run_name="small", **common, **{"train.batch_size": 16, "train.grad_accumulation": 2}))
    assert read_metrics(small)["train"]["steps"] == read_metrics(big)["train"]["steps"] == 16
    wa, wb = weights(big), weights(small)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-5, rtol=1e-4)


def test_bad_train_values_are_config_errors(tiny):
    from vaekit.errors import ConfigError

    with pytest.raises(ConfigError, match="train.grad_accumulation must be at least 1"):
        tiny(**{"train.grad_accumulation": 0})


def test_bf16_autocast_trains_and_keeps_fp32_weights(tiny):
    """The mixed-precision path on CPU (slow there, so not a default): finite loss, fp32 master weights;
    and a process that trained in fp32 before can train in bf16 now."""
    run = train(tiny(**{"train.mixed_precision": "bf16", "train.epochs": 1}))
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights(run).values())
    assert all(math.isfinite(r["loss"]) for r in log_records(run))


def test_validation_runs_on_a_fixed_subset_and_keeps_the_best_weights(tiny):
    run = train(tiny(**{"train.validation_examples": 40}))
    validations = [r for r in read_log(run) if "validation" in r]
    assert [r["step"] for r in validations] == [8, 16, 24]  # once per epoch by default for the small models
    assert set(validations[0]["validation"]) == {"negative_elbo", "reconstruction", "kl", "mse"}
    best = min(validations, key=lambda r: r["validation"]["negative_elbo"])
    record = json.loads((run / "best" / "best.json").read_text())
    assert record["step"] == best["step"] and record["value"] == best["validation"]["negative_elbo"]
    assert read_metrics(run)["train"]["best_step"] == best["step"]
    # The metric is the one the validator computes: the fixed subset scored again by hand gives it.
    from vaekit.data import build_dataset
    from vaekit.runs import read_run_config
    from vaekit.training.validation import Validator

    config = read_run_config(run)
    test = build_dataset(config.data, "test")
    model = vaekit.load_model(run / "best")
    validator = Validator(model, test, 40, None, config.seed, 256, torch.device("cpu"), lambda x: x)
    assert validator(model)[0]["negative_elbo"] == pytest.approx(record["value"], rel=1e-6)
    x, _ = test.__getitems__(test.spread_indices(40, config.seed))
    with torch.no_grad():
        mse = (model.decode(model.encode(x).mean) - x).pow(2).mean().item()
    assert record["validation"]["mse"] == pytest.approx(mse, rel=1e-5)


def test_mistakes_in_settings_used_after_training_are_reported_before_it(tiny, tmp_path):
    from vaekit.errors import ConfigError

    with pytest.raises(ConfigError, match="explore.arithmetic_source is 'circle', which is not a class of "
                                          "shapes/test; its classes: diagonal, horizontal, vertical, cross"):
        train(tiny(**{"explore.arithmetic_source": "circle"}))
    with pytest.raises(ConfigError, match="train.best_metric 'psnr' is not a validation metric of mlp-vae; "
                                          "choose one of: negative_elbo, reconstruction, kl, mse"):
        train(tiny(**{"train.best_metric": "psnr"}))
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made


def test_a_resumed_run_may_be_extended_and_nothing_else(tiny):
    from vaekit.errors import ConfigError

    longer = train(tiny(run_name="longer", **{"train.epochs": 5, "train.checkpoint_every": 100}))
    extended = train(tiny(run_name="extended", **{"train.epochs": 2, "train.checkpoint_every": 100}))
    with pytest.raises(ConfigError, match=r"train.lr cannot change \(a resumed run may change only train.checkpoint_every"):
        train(resume=extended, overrides=["train.lr=0.1"])
    train(resume=extended, overrides=["train.epochs=5"])
    assert_same_weights(longer, extended)
    assert "epochs: 5" in (extended / "config.yaml").read_text()
    assert [r["step"] for r in log_records(extended)] == [r["step"] for r in log_records(longer)]


def test_max_steps_ends_the_run_inside_an_epoch_and_a_resume_beyond_it_continues(tiny):
    run = train(tiny(run_name="short", **{"train.max_steps": 11}))
    assert read_metrics(run)["train"]["steps"] == 11
    assert latest_checkpoint(run / "checkpoints").name == "step-00000011"
    reference = train(tiny(run_name="whole", **{"train.checkpoint_every": 11}))
    train(resume=run, overrides=["train.max_steps=null"])
    assert read_metrics(run)["train"]["steps"] == 24
    assert_same_weights(reference, run)


def test_a_torn_log_line_from_a_kill_does_not_stop_a_resume(tiny):
    reference = train(tiny(run_name="reference"))
    run = train(tiny(run_name="torn", **{"train.epochs": 1}))
    with open(run / "train_log.jsonl", "a") as f:
        f.write('{"step": 9, "epoch": 2, "lo')  # killed mid-write
    train(resume=run, overrides=["train.epochs=3"])
    assert [r["step"] for r in log_records(run)] == [r["step"] for r in log_records(reference)]
    assert_same_weights(reference, run)


def test_the_loss_scaler_state_goes_into_checkpoints(tmp_path):
    from vaekit.io.checkpoints import load_checkpoint, save_checkpoint

    def small():
        return vaekit.create_model("mlp-ae", input_shape=(1, 2, 2), hidden_dims=[2], latent_dim=1)

    model = small()
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for _ in range(2):  # two overflow-free steps: the growth tracker counts them
        loss = model.decode(model.encode(torch.ones(1, 1, 2, 2)).mean).sum()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    path = save_checkpoint(tmp_path, 2, model, {"model": optimizer}, {}, {}, scaler=scaler)
    restored = torch.amp.GradScaler("cpu", init_scale=1.0)
    load_checkpoint(path, small(), {"model": torch.optim.AdamW(model.parameters())}, {}, scaler=restored)
    assert restored.state_dict() == scaler.state_dict()
    assert restored.get_scale() == 1024.0 and restored.state_dict()["_growth_tracker"] == 2
