"""``vaekit diffusion train`` and ``vaekit diffusion sample``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vaekit.config import to_dict
from vaekit.diffusion.config import DEFAULTS, diffusion_config
from vaekit.diffusion.data import open_latents
from vaekit.diffusion.diffusability import BUDGETS, Budget, budget_overrides, compare, make_budget, sweep_then_compare
from vaekit.diffusion.page import JSON_FILE, TABLE
from vaekit.diffusion.sampling import decode_latents, load_vae_for, sample_latents
from vaekit.errors import VaekitError
from vaekit.io.atomic import save_tensors
from vaekit.io.images import write_image
from vaekit.io.models import load_model
from vaekit.progress import DEVICE_HELP, resolve_device
from vaekit.runs import format_metrics, read_metrics, read_run_config
from vaekit.training import train
from vaekit.viz.grids import save_grid, square_grid


def cmd_train(args: argparse.Namespace) -> int:
    import yaml

    if args.resume:
        run_dir = train(resume=args.resume, overrides=args.items, evaluate_at_end=not args.no_eval, device=args.device,
                        explore=not args.no_explore)
    else:
        if not args.items:
            raise VaekitError("give the directory of exported latents (vaekit export-latents writes one)")
        latents, rest = args.items[0], args.items[1:]
        config_path = rest.pop(0) if rest and "=" not in rest[0] else None
        config = diffusion_config(latents, config_path, rest)
        if args.print_config:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return 0
        run_dir = train(config, evaluate_at_end=not args.no_eval, explore=not args.no_explore, device=args.device)
    print(format_metrics(read_metrics(run_dir)))
    if not args.no_explore:
        print(f"report: {run_dir / 'report.html'}")
    print(f"run directory: {run_dir}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    if args.n < 1 or args.steps < 1:
        raise VaekitError("-n and --steps must be at least 1")
    device = resolve_device(args.device)
    model = load_model(args.run, device=device)
    if model.kind != "denoiser":
        raise VaekitError(f"{args.run} holds a {model.registry_name}, not a denoiser trained by vaekit diffusion train")
    config = read_run_config(args.run)

    manifest = open_latents(config.data.params.path).manifest
    vae = load_vae_for(manifest, args.vae, device)
    latents, labels = sample_latents(model.eval(), args.n, args.steps, args.scheduler, args.class_, args.seed,
                                     device=device)
    images = decode_latents(vae, latents, manifest)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        write_image(out / f"sample-{i:04d}.png", image[None])
    save_grid(out / "grid.png", square_grid(images), value_range=(-1.0, 1.0))
    tensors = {"latents": latents, **({"labels": labels} if labels is not None else {})}
    save_tensors(out / "samples.safetensors", tensors)
    print(f"{args.n} samples ({args.steps} {args.scheduler.upper()} steps, seed {args.seed}) decoded by "
          f"{manifest.get('model_source') if args.vae is None else args.vae} -> {out} (grid.png, sample-*.png, "
          "samples.safetensors)")
    return 0


def cmd_diffusability(args: argparse.Namespace) -> int:
    args.vaes = [*args.model, *args.vaes]
    if not args.vaes:
        raise VaekitError("give the autoencoders to compare (--model M, repeated, or positionally), or one sweep config")
    if len(args.vaes) == 1 and args.vaes[0].endswith((".yaml", ".yml")):
        page = sweep_then_compare(args.vaes[0], args.output, resolve_device(args.device), budget_overrides(args))
    else:
        if args.output is None:
            raise VaekitError("give -o OUT, the folder for the comparison")
        page = compare(args.vaes, make_budget(budget_overrides(args)), args.output, resolve_device(args.device))
    report = json.loads((page.parent / JSON_FILE).read_text())
    print(report["verdict"])
    print("\n".join(report["judge"]["lines"]))
    print((page.parent / TABLE).read_text().rstrip())
    print(f"diffusability report: {page}")
    return 0


def add_commands(commands) -> None:
    diffusion = commands.add_parser(
        "diffusion", help="Stage B: train a diffusion model on exported latents, sample it",
        description="Latent diffusion's second stage on latents written by `vaekit export-latents`: "
        "`vaekit diffusion train LATENTS_DIR [CONFIG.yaml] [key=value ...]`, then "
        "`vaekit diffusion sample RUN_DIR -n 64`.")
    sub = diffusion.add_subparsers(dest="diffusion_command", metavar="COMMAND", required=True)
    diffusion.command_parsers = sub.choices
    train = sub.add_parser(
        "train", help="train a denoiser (diffusers UNet2DModel + DDPMScheduler) on exported latents",
        description="Train a denoiser on the latents in LATENTS_DIR and write a run directory like `vaekit train`. "
        "Starts from: " + " ".join(DEFAULTS) + "; a config file and key=value overrides change any of it "
        "(model.name=unet-small, model.prediction_type=v_prediction, model.class_conditional=true, ...).")
    train.add_argument("items", nargs="*", metavar="LATENTS_DIR [CONFIG.yaml] [KEY=VALUE ...]")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run (overrides may extend it)")
    train.add_argument("--num-processes", type=int, default=1, metavar="N",
                       help="train on N processes of this machine (one per GPU; gloo on CPU): train.batch_size is global")
    train.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    train.add_argument("--no-explore", action="store_true", help="skip the figures and report.html at the end")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and stop")
    train.add_argument("--device", default="auto", help=DEVICE_HELP + "; with --num-processes, each process's own GPU")
    train.set_defaults(func=cmd_train)
    sample = sub.add_parser(
        "sample", help="sample a trained denoiser and decode through the latents' VAE",
        description="Sample RUN_DIR's denoiser and decode the latents through the VAE recorded in the export's "
        "manifest: PNGs, grid.png and samples.safetensors (the latents) in the output folder.")
    sample.add_argument("run", metavar="RUN_DIR")
    sample.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    sample.add_argument("--scheduler", choices=["ddim", "ddpm"], default="ddim",
                        help="diffusers' DDIM (deterministic, default) or DDPM (ancestral) sampler")
    sample.add_argument("--class", dest="class_", type=int, metavar="K",
                        help="the class to sample (class-conditional models; default: all classes in turn)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--vae", metavar="PATH", help="the VAE to decode with (default: the one the manifest records)")
    sample.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    sample.add_argument("--device", default="auto", help=DEVICE_HELP)
    sample.set_defaults(func=cmd_sample)
    _add_diffusability(commands)


def _add_diffusability(commands) -> None:
    """``vaekit diffusability``: its options are the budget's (``Budget``)."""
    defaults = Budget()
    report = commands.add_parser(
        "diffusability", help="compare image autoencoders by how well a diffusion model learns their latents",
        description="Put autoencoders side by side under one budget (same images, denoiser, steps, seeds): "
        "reconstruction, latent statistics and power spectrum, equivariance errors, and the held-out ε-MSE of "
        "the same denoiser trained on each one's latents, and the arbiter: its decoded samples scored against "
        "held-out images no autoencoder or denoiser trained on (FD_DINOv2, else FID, their weights downloaded on "
        "first use; on labelled images, also a classifier's Fréchet distance, KID, precision and recall, which "
        "decides offline when its held-out accuracy reaches the bar), each beside its real-vs-real floor. The "
        "first line printed is the verdict, the next ones say what judged. Give model folders or runs, or "
        "one sweep config with a diffusability: section (configs/study-diffusability.yaml) to train the "
        "autoencoders first.")
    report.add_argument("vaes", nargs="*", metavar="VAE",
                        help="autoencoders (folders, runs, hub names), or one sweep config; --model is the same")
    report.add_argument("--model", action="append", default=[], metavar="M",
                        help="an autoencoder to compare (repeat it for each)")
    # The budget's options default to None: what is given overrides a sweep config's diffusability: section too.
    report.add_argument("--data", help=f"a folder of images (labelled: one sub-folder per class), photos (tiles of "
                        f"the built-in held-out photographs) or objects (the built-in labelled objects) (default {defaults.data})")
    report.add_argument("--resolution", type=int, help="image side (default: the smallest that gives every autoencoder "
                        f"latents of --min-latent-side, {defaults.min_latent_side} × {defaults.min_latent_side}: "
                        "128 for an f = 8 autoencoder)")
    report.add_argument("--min-latent-side", type=int,
                        help=f"refuse a resolution that gives a smaller latent side (default {defaults.min_latent_side})")
    report.add_argument("--budget", choices=list(BUDGETS),
                        help="a named budget: " + "; ".join(f"{name}: {b['steps']} steps × {len(b['seeds'])} seeds, "
                                                           f"{b['samples']} samples" for name, b in BUDGETS.items())
                        + " (default: quick's values); options given beside it replace its values")
    report.add_argument("--images", type=int, help=f"images with --data photos or objects (default {defaults.images})")
    report.add_argument("--test-fraction", type=float,
                        help=f"share of the images held out to score the denoiser and the samples "
                        f"(default {defaults.test_fraction})")
    report.add_argument("--steps", type=int, help=f"denoiser steps per seed (default {defaults.steps})")
    report.add_argument("--batch-size", type=int, help=f"denoiser batch (default {defaults.batch_size})")
    report.add_argument("--lr", type=float, help=f"denoiser learning rate (default {defaults.lr})")
    report.add_argument("--seeds", help=f"comma-separated (default {','.join(map(str, defaults.seeds))})")
    report.add_argument("--unet", help=f"the denoiser preset (default {defaults.unet}; unet-wide for latents "
                        "wider than its first level, as RAE's are)")
    report.add_argument("--time-shift", help="RAE's noise-schedule shift for every denoiser: auto (α = √(C·h·w / "
                        "--time-shift-base-dim) of each autoencoder's latents), a number α, or none (the default)")
    report.add_argument("--time-shift-base-dim", type=int, metavar="N",
                        help="the latent size C·h·w at which --time-shift auto gives α = 1 (default 4096, RAE's "
                        "4 × 32 × 32: SD's latents at 256²)")
    report.add_argument("--samples", type=int,
                        help=f"decoded samples per autoencoder for FID/KID and the classifier's Fréchet distance "
                        f"(default {defaults.samples})")
    report.add_argument("--per-channel", action="store_true", default=None,
                        help="normalise each autoencoder's latents per channel (latents_mean/latents_std) instead of "
                        "by one scaling factor")
    report.add_argument("--class-conditional", action="store_true", default=None,
                        help="class-conditional denoisers (labelled images): the arbiter also scores the classifier's "
                        "accuracy on samples of each class")
    report.add_argument("--dinov2", metavar="NAME",
                        help=f"the timm DINOv2 model of the FD_DINOv2 judge, '' to leave it out (default {defaults.dinov2})")
    report.add_argument("--control", action="store_true", default=None,
                        help="add the first autoencoder with its latent positions scrambled: the arbiter must rank it "
                        "far below the original")
    report.add_argument("-o", "--output", metavar="OUT", help="output folder")
    report.add_argument("--device", default="auto", help=DEVICE_HELP)
    report.set_defaults(func=cmd_diffusability)
