"""Validation that fits and never loses work: the memory estimates, the automatic validation batch, the
out-of-memory retry, and the checkpoint written before a validation that falls due at the same step."""

import json
import logging

import pytest
import torch
from torch import nn

import vaekit
from vaekit.config import ComponentConfig
from vaekit.data import build_dataset
from vaekit.data.shapes import ShapesConfig
from vaekit.models.memory import (PeakMemoryTracker, inference_bytes, reconstruction_bytes_per_image,
                                  saved_activation_bytes, training_bytes_per_image)
from vaekit.runs import read_log
from vaekit.training.memory import ValidationOutOfMemory, choose_validation_batch, is_out_of_memory
from vaekit.training.validation import Validator

TINY_KL = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=2, in_channels=1,
               out_channels=1)


def test_the_tracker_counts_the_peak_of_live_tensors_by_hand():
    """conv(3→16) → ReLU → conv(16→3) on 1×3×20×20: the peak is the first conv's output alive beside the
    ReLU's (16·20·20 float32 each); the second conv's output comes after the first is freed."""
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))
    assert inference_bytes(net, lambda m, x: m(x), (3, 20, 20)) == 2 * 16 * 20 * 20 * 4
    # Views share their base's bytes; a freed tensor's bytes are released.
    x = torch.zeros(10, 10)
    with PeakMemoryTracker() as tracker:
        y = x * 2
        view = y.view(100).t()  # noqa: F841
        del y
        z = x + 1
    assert tracker.peak == 2 * 400 and tracker.live == 2 * 400
    del z, view


def test_inference_estimate_grows_with_the_batch_and_the_pixels():
    model = vaekit.create_model("autoencoder-kl", **TINY_KL)
    one = reconstruction_bytes_per_image(model, (1, 32, 32))
    assert inference_bytes(model, lambda m, x: m.decode(m.encode(x).mode()), (1, 32, 32), batch=4) == 4 * one
    # Convolutions grow with the pixels; the mid block's attention matrix (tokens²) grows faster.
    convolutional = vaekit.create_model("autoencoder-kl", **TINY_KL, mid_block_add_attention=False)
    assert reconstruction_bytes_per_image(convolutional, (1, 64, 64)) == pytest.approx(
        4 * reconstruction_bytes_per_image(convolutional, (1, 32, 32)), rel=0.01)
    assert reconstruction_bytes_per_image(model, (1, 64, 64)) > 4 * one


def test_training_estimate_on_the_meta_device_matches_a_real_forward_pass():
    """The saved-tensor count on the meta device (no memory) equals the count on real CPU tensors; with
    attention it is more (meta takes attention's plain path, which keeps the attention matrix; the CPU's
    and CUDA's fused kernels do not), so the estimate errs on the safe side."""
    torch.manual_seed(0)
    model = vaekit.create_model("autoencoder-kl", **TINY_KL, mid_block_add_attention=False).train()
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    real = saved_activation_bytes(model, x)
    assert training_bytes_per_image(model, (1, 32, 32)) == pytest.approx(real, rel=1e-3)
    attending = vaekit.create_model("autoencoder-kl", **TINY_KL).train()
    assert training_bytes_per_image(attending, (1, 32, 32)) >= saved_activation_bytes(attending, x)
    assert training_bytes_per_image(model, (1, 32, 32), decoder_only=True) < real
    assert model.training and all(p.device.type == "cpu" for p in model.parameters())


def test_the_automatic_batch_fits_the_budget():
    assert choose_validation_batch(100, 1050, 64) == 10
    assert choose_validation_batch(100, 50, 64) == 1  # at least one image
    assert choose_validation_batch(100, 10 ** 9, 64) == 64  # never more than the subset


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def _tiny_validator(model, batch_size, count=12):
    test = build_dataset(ComponentConfig("shapes", ShapesConfig(num_train=16, num_test=count)), "test")
    return Validator(model, test, count, None, 0, batch_size, torch.device("cpu"), lambda x: x * 2 - 1)


class OutOfMemoryAbove:
    """Makes ``model.decode`` raise the device's out-of-memory error for batches above ``limit`` when it
    reconstructs validation's batches (called with ``size``); the latent signals' decodes (of up to 64
    images at once, ``metrics.latent``) are left alone: their batching is not the validation batch's."""

    def __init__(self, model, limit, error=torch.cuda.OutOfMemoryError):
        self.model, self.limit, self.error, self.sizes = model, limit, error, []
        self.decode = model.decode
        model.decode = self

    def __call__(self, z, *args, **kwargs):
        if "size" not in kwargs:
            return self.decode(z, *args, **kwargs)
        self.sizes.append(len(z))
        if len(z) > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.decode(z, *args, **kwargs)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_validation_halves_its_batch_on_out_of_memory_and_scores_the_same(error, caplog):
    torch.manual_seed(0)
    model = vaekit.create_model("autoencoder-kl", **TINY_KL)
    reference, _ = _tiny_validator(model, 3)(model)
    validator = _tiny_validator(model, 12)
    failing = OutOfMemoryAbove(model, 3, error)
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        metrics, shown = validator(model)
    assert failing.sizes[:3] == [12, 6, 3] and validator.batch_size == 3
    assert "trying again with 6" in caplog.text and "trying again with 3" in caplog.text
    common = set(reference) & set(metrics)
    assert {"psnr", "ssim", "mse"} <= common
    for key in common:
        assert metrics[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key
    # The halved batch is kept: the next validation does not fail first.
    failing.sizes.clear()
    validator(model)
    assert failing.sizes and max(failing.sizes) <= 3


def test_validation_out_of_memory_at_one_image_says_so():
    model = vaekit.create_model("autoencoder-kl", **TINY_KL)
    validator = _tiny_validator(model, 4)
    OutOfMemoryAbove(model, 0)
    with pytest.raises(ValidationOutOfMemory, match="even one image at a time .*resume") as raised:
        validator(model)
    assert isinstance(raised.value.__cause__, torch.cuda.OutOfMemoryError)
    assert validator.batch_size == 1


def test_other_errors_in_validation_are_not_retried():
    model = vaekit.create_model("autoencoder-kl", **TINY_KL)
    validator = _tiny_validator(model, 4)
    failing = OutOfMemoryAbove(model, 0, lambda message: RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        validator(model)
    assert failing.sizes == [4]


def test_the_automatic_batch_on_the_cpu_is_logged(caplog):
    model = vaekit.create_model("autoencoder-kl", **TINY_KL)
    validator = _tiny_validator(model, None)
    assert validator.bytes_per_image >= reconstruction_bytes_per_image(model, (1, 16, 16))
    with caplog.at_level(logging.INFO, logger="vaekit"):
        validator(model)
    assert validator.batch_size == 12  # the whole subset fits the CPU's budget
    assert "validation batch: 12 image(s) of 1×16×16" in caplog.text


def _crash_validation_at(monkeypatch, step):
    """Validation raises (as an out-of-memory error that could not be recovered would) at ``step``."""
    original = Validator.__call__
    state = {}

    def call(self, model):
        if state.get("step") == step:
            raise RuntimeError("validation crashed")
        return original(self, model)

    monkeypatch.setattr(Validator, "__call__", call)
    return state


def test_a_crash_in_validation_loses_no_steps_and_the_resumed_run_ends_like_the_uninterrupted_one(tiny,
                                                                                                   monkeypatch):
    """Checkpoint and validation both due at step 16: the checkpoint is on disk when validation crashes,
    the resumed run validates step 16 again and its weights, best/ and log equal the uninterrupted run's."""
    import vaekit.training.trainer as trainer

    settings = {"train.checkpoint_every": 8, "train.keep_checkpoints": 5}
    reference = vaekit.train(tiny(run_name="reference", **settings), explore=False, evaluate_at_end=False)
    state = _crash_validation_at(monkeypatch, 16)
    original_validate = trainer.validate

    def validate(run, *args):
        state["step"] = run.state.step
        return original_validate(run, *args)

    monkeypatch.setattr(trainer, "validate", validate)
    with pytest.raises(RuntimeError, match="validation crashed"):
        vaekit.train(tiny(run_name="crashed", **settings), explore=False, evaluate_at_end=False)
    monkeypatch.undo()
    run = reference.parent / "crashed"
    assert (run / "checkpoints" / "step-00000016").is_dir()
    vaekit.train(resume=run, explore=False, evaluate_at_end=False)
    assert read_log(run) == read_log(reference)
    for name in ("model", "best"):
        ours, theirs = vaekit.load_model(run / name).state_dict(), vaekit.load_model(reference / name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert json.loads((run / "best" / "best.json").read_text()) == json.loads((reference / "best" / "best.json")
                                                                              .read_text())


def read_checkpoint_meta(checkpoint):
    return json.loads((checkpoint / "trainer.json").read_text())


def test_each_checkpoint_holds_the_best_value_of_the_validations_before_it(tiny):
    """A checkpoint due at a validation's step is written before it, so its best_value is that of the
    earlier validations; the best of all is in best/ when the run ends."""
    run = vaekit.train(tiny(**{"train.checkpoint_every": 8, "train.keep_checkpoints": 5}), explore=False,
                       evaluate_at_end=False)
    validations = {r["step"]: r["validation"]["negative_elbo"] for r in read_log(run) if "validation" in r}
    assert sorted(validations) == [8, 16, 24]
    for checkpoint in sorted((run / "checkpoints").iterdir()):
        meta = read_checkpoint_meta(checkpoint)
        earlier = [value for at, value in validations.items() if at < meta["step"]]
        assert meta["best_value"] == (min(earlier) if earlier else None), meta["step"]
    assert json.loads((run / "best" / "best.json").read_text())["value"] == min(validations.values())
