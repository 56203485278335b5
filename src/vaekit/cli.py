"""The ``vaekit`` command."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from vaekit.config import load_config
from vaekit.diffusion.cli import add_commands as add_diffusion_commands
from vaekit.errors import VaekitError
from vaekit.evaluation import evaluate, evaluate_model
from vaekit.explore import explore_run
from vaekit.image_cli import add_commands
from vaekit.io.atomic import write_json
from vaekit.io.layout import CONFIG_NAME
from vaekit.progress import DEVICE_HELP, resolve_device
from vaekit.reference import first_sentence, markdown, section_text
from vaekit.registry import DATASETS, LOSSES, MODELS
from vaekit.runs import CONFIG_FILE, format_metrics, read_metrics
from vaekit.serve import serve
from vaekit.sweep import sweep
from vaekit.training import train
from vaekit.training.trainer import TrainingInterrupted
from vaekit.version import __version__

EXAMPLES_TRAIN = """\
examples:
  vaekit train                                   MLP VAE on the built-in shapes, about a minute on 2 cores
  vaekit train configs/digits-vae.yaml           a preset from configs/
  vaekit train configs/digits-vae.yaml model.latent_dim=2 train.lr=3e-4
  vaekit train data.name=folder data.path=my_images/ data.image_size=28
  vaekit train --resume runs/mlp-vae-shapes-20260101-120000

Overrides are dotted keys into the config (sections model, data, loss, train, eval, explore; top-level
seed, output_dir, run_name); values are read as YAML (lists as [256,128]). Unknown keys are errors.
Options and overrides may come in any order.
"""


def _split_config(items: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG.yaml] key=value ...`` -> (config path or None, the rest)."""
    if items and "=" not in items[0]:
        return items[0], list(items[1:])
    return None, list(items)


def _cmd_train(args: argparse.Namespace) -> int:
    config_path, positional = _split_config(args.items)
    if args.print_config:
        if args.resume:
            raise VaekitError("--print-config shows the config a new run would use; a run's own is its config.yaml")
        print(resolved_config_yaml(config_path, positional, args.device), end="")
        return 0
    if args.resume:
        if config_path:
            raise VaekitError("--resume continues a run with its saved config; give no config file with it "
                              f"(got {config_path!r}), only key=value overrides that extend the run")
        run_dir = train(resume=args.resume, overrides=positional, evaluate_at_end=not args.no_eval, device=args.device,
                        explore=not args.no_explore)
    else:
        bad = [item for item in positional if "=" not in item]
        if bad:
            raise VaekitError(f"expected one config file then key=value overrides, got {bad[0]!r} after them")
        run_dir = train(load_config(config_path, positional), evaluate_at_end=not args.no_eval, device=args.device,
                        explore=not args.no_explore)
    if not _is_main_process():
        return 0
    print(format_metrics(read_metrics(run_dir)))
    if not args.no_explore:
        print(f"report: {run_dir / 'report.html'}")
    print(f"run directory: {run_dir}")
    return 0


def resolved_config_yaml(config_path: str | None, overrides: list[str], device: str = "auto") -> str:
    """The config a run of ``vaekit train CONFIG OVERRIDES --device DEVICE`` would use, every default filled
    in, with its plan (steps, warm-up, memory) as comments."""
    from vaekit.training.preview import preview_yaml

    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise VaekitError(f"expected one config file then key=value overrides, got {bad[0]!r} after them")
    return preview_yaml(load_config(config_path, overrides), device)


def registered() -> dict[str, list[tuple[str, str]]]:
    """Every registered model (presets included), dataset and loss with a one-line description."""
    import vaekit  # noqa: F401  (registers everything)

    out: dict[str, list[tuple[str, str]]] = {}
    for kind, registry in (("models", MODELS), ("datasets", DATASETS), ("losses", LOSSES)):
        rows = []
        for name in registry.names():
            entry = registry.get(name)
            summary = first_sentence(entry.obj)
            if entry.obj.registry_name != name:
                summary = f"{entry.obj.registry_name} with " + ", ".join(f"{k}={v}" for k, v in entry.defaults.items())
            rows.append((name, summary))
        out[kind] = rows
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown(), end="")
        return 0
    if args.name is None:
        for kind, rows in registered().items():
            print(f"{kind}:")
            width = max(len(name) for name, _ in rows)
            print("\n".join(f"  {name:<{width}}  {summary}" for name, summary in rows))
        print("\n`vaekit list NAME` prints the keys of one (or of a section: train, eval, explore), with their "
              "defaults and meanings; every key: docs/options.md.")
        return 0
    text = section_text(args.name)
    if text is None:
        known = [name for rows in registered().values() for name, _ in rows]
        raise VaekitError(f"nothing is registered as {args.name!r}; registered: {', '.join(known)} "
                          "(and the sections train, eval, explore)")
    print(text)
    return 0


def _is_main_process() -> bool:
    """False in the second and later processes of a multi-process launch (which print nothing)."""

    return int(os.environ.get("RANK", "0")) == 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.model is not None or args.data is not None:
        return _eval_model(args)
    if args.run_dir is None:
        raise VaekitError("give a run directory, or --model M --data FOLDER to score any image autoencoder")
    metrics = evaluate(args.run_dir, iwae_samples=args.iwae_samples, device=args.device)
    best = read_metrics(args.run_dir).get("test_best")
    print(format_metrics({"test": metrics, **({"test_best (best/)": best} if best else {})}))
    print(f"written to {Path(args.run_dir) / 'metrics.json'}")
    return 0


def _eval_model(args: argparse.Namespace) -> int:
    if args.model is None or args.data is None or args.run_dir is not None:
        raise VaekitError("vaekit eval --model M --data FOLDER scores a model on a folder: give both, and no RUN_DIR")
    metrics = evaluate_model(args.model, args.data, resolution=args.resolution, batch_size=args.batch_size,
                             device=args.device)
    print(format_metrics({"eval": metrics}))
    if args.output:
        write_json(Path(args.output), metrics)
        print(f"written to {args.output}")
    return 0


def _refuse_model_folder(path: str, command: str) -> None:
    """explore and serve show a training run: its model on its own data's test split, which its config
    names. A model folder alone (any autoencoder vaekit loads, a wrapped diffusers class among them) has no
    data to show, so it gets one line naming the commands that take it."""
    folder = Path(path)
    if (folder / CONFIG_NAME).is_file() and not (folder / CONFIG_FILE).is_file():
        raise VaekitError(f"{path} is a model folder, not a run directory: vaekit {command} shows a run's model on its "
                          f"own test split, which the run's config names; score a model alone with vaekit eval --model "
                          f"{path} --data FOLDER (or vaekit compare), or see its latents with vaekit reconstruct/encode")


def _cmd_explore(args: argparse.Namespace) -> int:
    _refuse_model_folder(args.run_dir, "explore")
    report = explore_run(args.run_dir, device=args.device)
    print(f"figures: {report.parent / 'figures'}")
    print(f"report: {report}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    _refuse_model_folder(args.run_dir, "serve")
    serve(args.run_dir, args.host, args.port, str(resolve_device(args.device)))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    config_path, positional = _split_config(args.items)
    if args.output_dir_old:
        logging.getLogger("vaekit").warning("--output-dir is the older spelling of -o/--output; it still works")
        args.output_dir = args.output_dir or args.output_dir_old
    report = sweep(config_path, positional, output_dir=args.output_dir, device=args.device)
    print((report.parent / "sweep.csv").read_text().rstrip())
    print(f"sweep report: {report}")
    return 0


def _add_train(commands) -> None:
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
                       help="continue a stopped run from its latest checkpoint (same config, same result); "
                       "overrides may extend it: train.epochs, train.max_steps, and the checkpoint, validation "
                       "and logging intervals")
    train.add_argument("--num-processes", type=int, default=1, metavar="N",
                       help="train on N processes of this machine (one per GPU; gloo on CPU) with the same config: "
                       "train.batch_size is the global batch")
    train.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation at the end")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config (every default filled in, auto settings for --device) as "
                       "YAML, with the optimizer steps the data makes and the estimated memory as comments, and stop, "
                       "training nothing")
    train.add_argument("--no-explore", action="store_true",
                       help="skip the figures and report.html at the end (`vaekit explore RUN_DIR` draws them later)")
    train.add_argument("--device", default="auto", help=DEVICE_HELP + "; with --num-processes, each process's own GPU")
    train.set_defaults(func=_cmd_train)


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a trained run on its test split, or any image autoencoder on a folder",
        description="Evaluate a run's model on the test split of its data (the final weights, and best/ when the "
        "run kept it), or with --model M --data FOLDER any image autoencoder on every image of a folder (adding "
        "the latent shape, the cheap latent signals, encode/decode time per image and memory). VAEs: negative ELBO, reconstruction, KL, "
        "KL per latent dimension, active units, the IWAE bound and MSE; plain autoencoders: reconstruction and MSE. "
        "Image autoencoders (KL and VQ): MSE, PSNR (per-image mean, and psnr_of_mean_mse), SSIM, L1, LPIPS and "
        "rFID (their weights are downloaded on first use; null with the reason when that fails), hf_energy_ratio "
        "(high-frequency energy of the reconstructions over the originals'), KL, the compression ratio, the "
        "latents' mean and std overall and per channel with scaling_factor_estimate (1/std of posterior samples), "
        "and for VQ models codebook usage, codes used and perplexity. Denoisers: held-out eps_mse overall and per "
        "timestep bucket. Prints a table and writes RUN_DIR/metrics.json.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", nargs="?",
                          help="a run directory written by `vaekit train` (its final weights and best/ are scored)")
    evaluate.add_argument("--model", metavar="M", help="instead of a run: any image autoencoder (a vaekit or diffusers "
                          "folder, an LDM/SD checkpoint, a hub name such as stabilityai/sd-vae-ft-mse), with --data")
    evaluate.add_argument("--data", metavar="FOLDER", help="the folder of images --model is scored on (every image)")
    evaluate.add_argument("--resolution", type=int, default=256,
                          help="with --model: short side resized to it, then a centre crop (default 256)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="with --model: images a batch (default 8)")
    evaluate.add_argument("-o", "--output", metavar="FILE.json", help="with --model: also write the metrics here")
    evaluate.add_argument("--iwae-samples", type=int, metavar="K",
                          help="samples of the importance-weighted bound (default: the run's eval.iwae_samples; 0 skips)")
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.set_defaults(func=_cmd_eval)


def _add_explore(commands) -> None:
    explore = commands.add_parser(
        "explore",
        help="draw a run's latent space: figures and report.html",
        description="Draw what a trained run's latent space holds into RUN_DIR/figures/ and write RUN_DIR/report.html "
        "(opens from disk, no server): reconstructions, prior samples, linear and spherical interpolations, latent "
        "maps (the latent itself when 2-D, else PCA and t-SNE, and UMAP when umap-learn is installed), traversals "
        "sorted by KL, training progression, a latent-walk GIF through the class centroids, nearest neighbours, "
        "attribute arithmetic, KL per dimension and loss curves, and a model card. What to draw is the run's "
        "explore section (e.g. explore.arithmetic_source, explore.arithmetic_target).",
    )
    explore.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `vaekit train`")
    explore.add_argument("--device", default="auto", help=DEVICE_HELP)
    explore.set_defaults(func=_cmd_explore)


def _add_sweep(commands) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="train one run per value of one or more keys and compare them",
        description="Train one run per combination of the swept values (a grid), each with figures and a report, "
        "then write sweep.csv and sweep.html beside them: test negative ELBO, IWAE bound, reconstruction, KL, "
        "active units, MSE and interpolation smoothness per run, plots against the swept value, and the runs' "
        "reconstructions and samples side by side.",
        epilog="examples:\n"
        "  vaekit sweep configs/digits-vae.yaml model.latent_dim=2,8,32,64\n"
        "  vaekit sweep configs/digits-vae.yaml model.beta=0.5,1,4 train.epochs=50\n"
        "  vaekit sweep configs/digits-vae.yaml model.hidden_dims=[256],[512,256,128]\n"
        "  vaekit sweep configs/sweep-beta.yaml            a preset whose sweep: section holds the grid\n"
        "\nA key with one value is a plain override; commas inside [...] do not split values.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [KEY=V1,V2,... ...]",
                       help="a YAML config (optional), then keys with the values to sweep")
    sweep.add_argument("-o", "--output", dest="output_dir", metavar="DIR",
                       help="where the sweep directory goes (default: the config's output_dir)")
    sweep.add_argument("--output-dir", dest="output_dir_old", help=argparse.SUPPRESS)  # the older spelling
    sweep.add_argument("--device", default="auto", help=DEVICE_HELP)
    sweep.set_defaults(func=_cmd_sweep)


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve", help="explore a run's latent space in the browser",
        description="Start a local web server with the interactive explorer of RUN_DIR's model and print its URL: "
        "for a small VAE a map of the test codes to drag over, one slider per dimension, prior samples, "
        "interpolation and nearest neighbours; for an image autoencoder its latent channels, to edit and decode.")
    serve.add_argument("run_dir", metavar="RUN_DIR")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    serve.add_argument("--device", default="auto", help=DEVICE_HELP)
    serve.set_defaults(func=_cmd_serve)


def _add_listing(commands) -> None:
    listing = commands.add_parser(
        "list", help="the registered models, presets, datasets and losses",
        description="With no argument: every name a config can use (model.name, data.name, loss.name), with "
        "what it is. With a NAME: every key of that component's (or section's) config, with its default and "
        "meaning. With --markdown: all of them (docs/options.md).")
    listing.add_argument("name", nargs="?", metavar="NAME",
                         help="a model, preset, dataset or loss, or a section: train, eval, explore")
    listing.add_argument("--markdown", action="store_true",
                         help="print every key of every section and component as markdown (docs/options.md)")
    listing.set_defaults(func=_cmd_list)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaekit",
        description="Train, evaluate and explore variational autoencoders.",
        epilog="Run `vaekit COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print warnings, errors and results")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(commands)
    _add_evaluate(commands)
    _add_explore(commands)
    _add_sweep(commands)
    _add_serve(commands)
    _add_listing(commands)

    add_commands(commands)
    add_diffusion_commands(commands)
    parser.command_parsers = commands.choices
    _show_defaults(parser)
    return parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's default shown where its help does not give it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS)
                or text == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    for sub in getattr(parser, "command_parsers", {}).values():
        _show_defaults(sub)


INTERMIXED = (("train",), ("sweep",), ("diffusion", "train"))
"""Commands whose positional items (config, overrides) may be interleaved with their options."""


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """argparse's parse, except that ``train``, ``sweep`` and ``diffusion train`` accept options anywhere
    among their items (``vaekit train configs/x.yaml --no-eval train.lr=1e-3``)."""
    parser = build_parser()
    index = next((i for i, item in enumerate(argv) if not item.startswith("-")), None)
    if index is None or any(a in ("-h", "--help") for a in argv[index + 1:]):
        return parser.parse_args(argv)
    command = next((c for c in INTERMIXED if tuple(argv[index:index + len(c)]) == c), None)
    if command is None:
        return parser.parse_args(argv)
    end = index + len(command)
    args = parser.parse_args(argv[:end])
    subparser = parser.command_parsers[command[0]]
    for name in command[1:]:
        subparser = subparser.command_parsers[name]
    for key, value in vars(subparser.parse_intermixed_args(argv[end:])).items():
        setattr(args, key, value)
    return args


def launch(argv: list[str], processes: int) -> int:
    """Run ``vaekit ARGV`` in ``processes`` processes of this machine (torch.distributed's launcher, which
    ``accelerate launch`` uses too); Accelerate in each process reads the rank and world size it sets."""

    if processes < 1:
        raise VaekitError(f"--num-processes must be at least 1, got {processes}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "vaekit", *argv]
    return subprocess.call(command)


def _without_num_processes(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--num-processes":
            skip = True
        elif not item.startswith("--num-processes="):
            out.append(item)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_arguments(argv)
    quiet = args.quiet or not _is_main_process()  # one voice for a multi-process launch
    logging.basicConfig(format="vaekit: %(message)s", level=logging.WARNING if quiet else logging.INFO)

    try:
        if getattr(args, "num_processes", 1) != 1:
            return launch(_without_num_processes(argv), args.num_processes)
        return args.func(args)
    except TrainingInterrupted as err:
        print(f"vaekit: {err}", file=sys.stderr)
        return 130
    except VaekitError as err:
        print(f"vaekit: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `vaekit list | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
