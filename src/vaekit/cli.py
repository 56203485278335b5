"""The ``vaekit`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vaekit import __version__
from vaekit.errors import VaekitError

EXAMPLES_TRAIN = """\
examples:
  vaekit train                                   MLP VAE on the built-in shapes, about a minute on 2 cores
  vaekit train configs/digits-vae.yaml           a preset from configs/
  vaekit train configs/digits-vae.yaml model.latent_dim=2 train.lr=3e-4
  vaekit train data.name=folder data.path=my_images/ data.image_size=28
  vaekit train --resume runs/mlp-vae-shapes-20260101-120000

Overrides are dotted keys into the config (sections model, data, train, eval; top-level seed,
output_dir, run_name); values are read as YAML (lists as [256,128]). Unknown keys are errors.
"""


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def format_metrics(metrics: dict) -> str:
    """The metrics of a run as an aligned two-column table, one section after another."""
    lines = []
    for section, values in metrics.items():
        lines.append(f"{section}:")
        width = max((len(k) for k in values), default=0)
        lines.extend(f"  {key:<{width}}  {_format_value(value)}" for key, value in values.items())
    return "\n".join(lines)


def _cmd_train(args: argparse.Namespace) -> int:
    from vaekit.config import load_config
    from vaekit.runs import read_metrics
    from vaekit.training import train

    positional = list(args.items)
    config_path = positional.pop(0) if positional and "=" not in positional[0] else None
    if args.resume:
        if config_path or positional:
            raise VaekitError("--resume continues a run with its saved config; give no config or overrides with it")
        run_dir = train(resume=args.resume, evaluate_at_end=not args.no_eval)
    else:
        bad = [item for item in positional if "=" not in item]
        if bad:
            raise VaekitError(f"expected one config file then key=value overrides, got {bad[0]!r} after them")
        run_dir = train(load_config(config_path, positional), evaluate_at_end=not args.no_eval)
    print(format_metrics(read_metrics(run_dir)))
    print(f"run directory: {run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from vaekit.evaluation import evaluate

    metrics = evaluate(args.run_dir, iwae_samples=args.iwae_samples, device=args.device)
    print(format_metrics({"test": metrics}))
    print(f"written to {Path(args.run_dir) / 'metrics.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaekit",
        description="Train, evaluate and explore variational autoencoders.",
        epilog="Run `vaekit COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print warnings, errors and results")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train a model and write a run directory",
        description="Train a model. With no arguments: an MLP VAE on the built-in 16x16 geometric patterns. "
        "Writes a run directory (config.yaml, model/, checkpoints/, train_log.jsonl, metrics.json), "
        "evaluates the model on the test split and prints the metrics and the run directory.",
        epilog=EXAMPLES_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [KEY=VALUE ...]",
                       help="a YAML config (optional) followed by dotted overrides")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a stopped run from its latest checkpoint (same config, same result)")
    train.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation at the end")
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a trained run on its test split",
        description="Evaluate a run's model on the test split of its data: negative ELBO, reconstruction, KL, "
        "KL per latent dimension, active units and the IWAE bound (VAEs); reconstruction and MSE "
        "(plain autoencoders). Prints a table and writes RUN_DIR/metrics.json.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `vaekit train`")
    evaluate.add_argument("--iwae-samples", type=int, metavar="K",
                          help="samples of the importance-weighted bound (default: the run's eval.iwae_samples; 0 skips)")
    evaluate.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    evaluate.set_defaults(func=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="vaekit: %(message)s", level=logging.WARNING if args.quiet else logging.INFO)
    from vaekit.training.trainer import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as err:
        print(f"vaekit: {err}", file=sys.stderr)
        return 130
    except VaekitError as err:
        print(f"vaekit: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
