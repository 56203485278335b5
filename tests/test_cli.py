import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vaekit.cli import main
from vaekit.losses import ELBOLoss

from conftest import tiny_overrides


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_eval_and_resume(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(capsys, "train", *tiny_overrides(tmp_path, run_name="a"))
    assert code == 0
    run = tmp_path / "runs" / "a"
    assert f"run directory: {run}" in out and "negative_iwae_bound" in out
    assert f"report: {run / 'report.html'}" in out and (run / "report.html").is_file()

    code, out, _ = run_cli(capsys, "eval", str(run), "--iwae-samples", "20")
    assert code == 0 and "negative_elbo" in out and "written to" in out

    original, calls = ELBOLoss.forward, {"n": 0}

    def interrupt(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ELBOLoss, "forward", interrupt)
    code, _, err = run_cli(capsys, "train", "--no-explore", *tiny_overrides(tmp_path, run_name="b"))
    monkeypatch.undo()
    assert code == 130 and f"vaekit train --resume {tmp_path / 'runs' / 'b'}" in err
    code, out, _ = run_cli(capsys, "train", "--resume", str(tmp_path / "runs" / "b"), "--no-explore")
    assert code == 0 and "run directory" in out and "report:" not in out
    a = (run / "model" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "runs" / "b" / "model" / "model.safetensors").read_bytes()


def test_train_with_a_config_file_and_overrides(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  name: cvae\ndata:\n  name: digits\ntrain:\n  epochs: 1\n")
    code, out, _ = run_cli(capsys, "train", "--no-explore", str(config), f"output_dir={tmp_path}", "model.hidden_dims=[16]",
                           "train.progress_bar=false", "eval.iwae_samples=4")
    assert code == 0 and "cvae-digits" in out


def _image_folder(root, bad_file=None):
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(12):
        size = (10 + i, 12)  # a different size for each image
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(root / f"{i}.png")
    if bad_file:
        (root / bad_file).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "model.latent=3"], "unknown config key model.latent; valid keys of model"),
        (["train", "train.epochs=many"], "train.epochs must be an integer, got 'many'"),
        (["train", "missing.yaml"], "config file not found: missing.yaml"),
        (["train", "train.epochs=1", "extra.yaml"], "expected one config file then key=value overrides"),
        (["train", "data.name=folder", "data.path=EMPTY"], "has no image files"),
        (["train", "data.name=folder", "data.path=BADONLY"], "none of the 1 images of folder"),
        (["train", "model.name=cvae", "data.name=folder", "data.path=FLAT"], "needs labels"),
        (["train", "model.input_shape=[1,8,8]"], "model.input_shape is [1, 8, 8] but shapes/train has images"),
        (["train", "--resume", "NOTRUN"], "is not a vaekit run directory"),
        (["train", "--resume", "NOTRUN", "other.yaml"], "give no config file with it (got 'other.yaml')"),
        (["train", "--resume", "NOTRUN", "train.epochs=2"], "is not a vaekit run directory"),
        (["eval", "NOTRUN"], "is not a vaekit run directory"),
        (["eval", "MISSING"], "no such run directory"),
    ],
)
def test_bad_input_gets_one_line_error(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notrun").mkdir()
    (tmp_path / "badonly").mkdir()
    (tmp_path / "badonly" / "x.jpg").write_bytes(b"not a jpeg")
    _image_folder(tmp_path / "flat")
    paths = {"EMPTY": tmp_path / "empty", "BADONLY": tmp_path / "badonly", "FLAT": tmp_path / "flat",
             "NOTRUN": tmp_path / "notrun", "MISSING": tmp_path / "missing"}
    argv = [next((a.replace(k, str(v)) for k, v in paths.items() if k in a), a) for a in argv]
    if argv[0] == "train" and "--resume" not in argv:
        argv.append(f"output_dir={tmp_path / 'runs'}")
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("vaekit: error: ") and message in lines[-1]


def test_a_bad_file_in_a_folder_is_skipped_not_fatal(tmp_path, capsys, caplog):
    folder = _image_folder(tmp_path / "imgs", bad_file="broken.png")
    code, out, err = run_cli(capsys, "train", "--no-explore", "data.name=folder", f"data.path={folder}", "data.image_size=8",
                             "model.hidden_dims=[8]", "train.epochs=1", "train.progress_bar=false",
                             "eval.iwae_samples=2", f"output_dir={tmp_path / 'runs'}")
    assert code == 0
    assert "skipped broken.png" in caplog.text and "the next readable image takes its place" in caplog.text
    assert "broken.png" in out  # listed under skipped_files in the metrics


@pytest.mark.slow
def test_help_of_every_command_through_the_entry_point():
    for argv in ([], ["train"], ["eval"], ["explore"], ["sweep"]):
        result = subprocess.run([sys.executable, "-m", "vaekit", *argv, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: vaekit" in result.stdout
    result = subprocess.run([sys.executable, "-m", "vaekit"], capture_output=True, text=True)
    assert result.returncode == 2 and "COMMAND" in result.stderr


def test_options_and_overrides_come_in_any_order():
    from vaekit.cli import parse_arguments

    args = parse_arguments(["-q", "train", "configs/x.yaml", "--no-eval", "train.lr=1e-3", "--resume", "r", "a=1"])
    assert args.items == ["configs/x.yaml", "train.lr=1e-3", "a=1"] and args.no_eval and args.resume == "r"
    assert args.quiet and args.command == "train"
    args = parse_arguments(["sweep", "c.yaml", "-o", "out", "model.beta=1,2"])
    assert args.items == ["c.yaml", "model.beta=1,2"] and args.output_dir == "out"
    args = parse_arguments(["sweep", "c.yaml", "--output-dir", "old", "model.beta=1,2"])  # the older spelling
    assert args.items == ["c.yaml", "model.beta=1,2"] and args.output_dir_old == "old"


def test_list_names_everything_registered_and_each_config_with_its_defaults(capsys):
    import yaml

    from vaekit.config import load_config, to_dict
    from vaekit.registry import DATASETS, LOSSES, MODELS

    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert listed == set(MODELS.names()) | set(DATASETS.names()) | set(LOSSES.names())
    assert "kl-f8 " in out and "autoencoder-kl with block_out_channels=(128, 256, 512, 512), latent_channels=4" in out
    # What `list NAME` prints (read from the config dataclasses) is what a config naming it resolves to.
    for name, section, extra in [("kl-f8", "model", []), ("beta-vae", "model", []), ("shapes", "data", []),
                                 ("folder-crops", "data", ["data.path=x"]), ("lpips-gan", "loss", ["model.name=kl-f8"])]:
        code, out, _ = run_cli(capsys, "list", name)
        printed = yaml.safe_load(out)[section]
        resolved = to_dict(getattr(load_config(None, [f"{section}.name={name}", *extra]), section))
        if extra == ["data.path=x"]:
            assert printed.pop("path") == "" and resolved.pop("path") == "x" and "path: ''  # required" in out
        assert code == 0 and printed == resolved, name
    code, _, err = run_cli(capsys, "list", "transformer")
    assert code == 1 and "nothing is registered as 'transformer'; registered: autoencoder-kl" in err


def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    import yaml

    from vaekit.config import build_run_config, load_config

    overrides = ["model.latent_dim=3", f"output_dir={tmp_path / 'runs'}"]
    code, out, _ = run_cli(capsys, "train", "configs/digits-vae.yaml", "--print-config", *overrides)
    assert code == 0 and not (tmp_path / "runs").exists()
    printed = yaml.safe_load(out)
    assert printed["model"]["latent_dim"] == 3 and printed["train"]["adam_betas"] is None  # every default filled in
    assert build_run_config(printed) == load_config("configs/digits-vae.yaml", overrides)
    code, _, err = run_cli(capsys, "train", "--print-config", "--resume", str(tmp_path))
    assert code == 1 and "its config.yaml" in err


def test_one_device_option_with_one_default(tmp_path, capsys):
    import torch

    from vaekit.cli import build_parser
    from vaekit.progress import resolve_device

    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto") and resolve_device("cpu") == torch.device("cpu")
    commands = build_parser().command_parsers
    for command in ("eval", "explore", "reconstruct", "encode", "decode", "export-latents", "calibrate"):
        device = next(a for a in commands[command]._actions if a.dest == "device")
        assert device.default == "auto", command
    (tmp_path / "run").mkdir()
    for device, message in [("banana", "unknown device 'banana'"),
                            (f"cuda:{torch.cuda.device_count()}", "cuda:")]:
        code, _, err = run_cli(capsys, "reconstruct", "x.png", "-o", str(tmp_path), "--model", str(tmp_path / "run"),
                               "--device", device)
        assert code == 1 and message in err.strip().splitlines()[-1]


def test_progress_bars_show_on_a_terminal_and_not_with_quiet(monkeypatch):
    import io
    import logging

    from vaekit.progress import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    logger = logging.getLogger("vaekit")
    before = logger.level
    try:
        for level, shown in [(logging.INFO, True), (logging.WARNING, False)]:  # `vaekit -q` sets WARNING
            monkeypatch.setattr(sys, "stderr", Terminal())
            logger.setLevel(level)
            assert list(progress(range(3), desc="encode", unit="image")) == [0, 1, 2]
            assert ("encode:" in sys.stderr.getvalue() and "/3" in sys.stderr.getvalue()) == shown
        monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar even at INFO
        logger.setLevel(logging.INFO)
        list(progress(range(3), desc="encode"))
        assert sys.stderr.getvalue() == ""
    finally:
        logger.setLevel(before)


def test_the_training_bar_is_drawn_on_a_terminal_and_lines_are_logged_elsewhere(tiny, monkeypatch, caplog):
    """Written to a file or a pipe, a bar is a carriage-return frame per step (a 1,500-step run left a 1 MB
    log): there a line per logging interval replaces it; `vaekit -q` has neither."""
    import io
    import logging

    from vaekit.training import train

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    cases = [(Terminal, logging.INFO, True, False), (io.StringIO, logging.INFO, False, True),
             (io.StringIO, logging.WARNING, False, False), (Terminal, logging.WARNING, False, False)]
    for stream, level, bar, lines in cases:
        monkeypatch.setattr(sys, "stderr", stream())
        caplog.clear()
        with caplog.at_level(level, logger="vaekit"):
            train(tiny(**{"train.progress_bar": "true", "train.epochs": 1}), evaluate_at_end=False, explore=False)
        written = sys.stderr.getvalue()
        assert ("\r" in written and "train:" in written) == bar, (stream, level)
        assert any("train step" in r.getMessage() for r in caplog.records) == lines, (stream, level)


def test_every_command_that_runs_a_model_takes_device(tmp_path, capsys):
    from vaekit.cli import build_parser

    parser = build_parser()
    runs_a_model = [("train",), ("sweep",), ("eval",), ("explore",), ("serve",), ("reconstruct",), ("encode",),
                    ("decode",), ("export-latents",), ("calibrate",), ("diffusion", "train"), ("diffusion", "sample"),
                    ("diffusability",)]
    for path in runs_a_model:
        command = parser.command_parsers[path[0]]
        if len(path) == 2:
            command = command.command_parsers[path[1]]
        assert "--device" in command._option_string_actions, path
    code, out, _ = run_cli(capsys, "train", *tiny_overrides(tmp_path), "--device", "cpu", "--no-explore")
    assert code == 0 and "run directory" in out
    code, _, err = run_cli(capsys, "train", *tiny_overrides(tmp_path), "--device", "banana", "--no-explore")
    assert code == 1 and "unknown device 'banana'" in err
