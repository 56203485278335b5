"""kill -9 at seeded moments, then --resume: the run ends bitwise where the uninterrupted one did.

A real SIGKILL to a real `vaekit train` process (kl-f8-tiny with the PatchGAN, an EMA, validation with
best weights, snapshots and lazily read random crops of a folder of photographs), twice in one run.
"""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vaekit.runs import read_log

pytestmark = pytest.mark.slow


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "vaekit", "-q", "train", *args, "--no-eval", "--no-explore"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def tensors_equal(a, b):
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, its settings and how long it took."""
    root = tmp_path_factory.mktemp("kill")
    folder = root / "photos"
    folder.mkdir()
    for i in range(26):
        small = np.random.default_rng(i).integers(0, 255, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((64, 48), Image.Resampling.BICUBIC).save(folder / f"{i:02d}.jpg")
    args = ["model.name=kl-f8-tiny", "data.name=folder-crops", f"data.path={folder}", "data.crop_size=32",
            "data.short_side=40", "loss.perceptual_weight=0", "loss.disc_start=6", "train.ema_decay=0.9",
            "train.epochs=7", "train.batch_size=4", "train.checkpoint_every=4", "train.validate_every=5",
            "train.validation_examples=3", "train.log_every=1", "train.snapshot_examples=2",
            "train.progress_bar=false", f"output_dir={root}"]
    started = time.monotonic()
    finished(start(*args, "run_name=reference"))
    return args, root / "reference", time.monotonic() - started


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_at_seeded_moments_then_resume_ends_bitwise_like_the_uninterrupted_run(reference, seed, tmp_path):
    """Two kills a run, each at a moment drawn from ``seed`` (a fraction of the time left once a checkpoint
    exists): the same moments every time the test runs, different ones per seed."""
    args, reference_dir, duration = reference
    rng = np.random.default_rng(seed)
    args = [a for a in args if not a.startswith("output_dir=")] + [f"output_dir={tmp_path}"]
    run = tmp_path / "killed"

    killed_at = []
    process = start(*args, "run_name=killed")
    for attempt in range(2):
        begun = time.monotonic()
        while not any((run / "checkpoints").glob("step-*")) and process.poll() is None:
            time.sleep(0.01)
        delay = rng.uniform(0, 0.6) * max(duration - (time.monotonic() - begun), 0.5)
        time.sleep(delay)
        if process.poll() is None:
            process.kill()  # SIGKILL: no handler runs, files may be half written
            killed_at.append(round(delay, 2))
        process.communicate(timeout=60)
        process = start("--resume", str(run)) if attempt == 0 else None
    finished(start("--resume", str(run)))

    note = f"seed {seed}: killed {killed_at} s after a checkpoint existed"
    assert killed_at, "the run ended before it could be killed"
    assert tensors_equal(reference_dir / "model" / "model.safetensors", run / "model" / "model.safetensors"), note
    assert tensors_equal(reference_dir / "best" / "model.safetensors", run / "best" / "model.safetensors"), note
    for snapshot in (reference_dir / "snapshots").iterdir():
        assert tensors_equal(snapshot, run / "snapshots" / snapshot.name), (snapshot.name, note)
    assert read_log(run) == [r for r in read_log(reference_dir)], note
    assert not list(run.glob(".best-*")) and not list((run / "checkpoints").glob(".tmp-*")), note
