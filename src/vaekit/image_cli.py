"""The image-autoencoder commands: reconstruct, encode, decode, convert.

A bad file among many is skipped with a one-line reason, and the command goes on; the exit status is
1 only when nothing could be processed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path

import torch

from vaekit.data.prefetch import prefetch
from vaekit.errors import VaekitError
from vaekit.io.atomic import write_folder, write_json
from vaekit.io.convert import export_diffusers
from vaekit.io.images import DEFAULT_MAX_PIXELS, read_image, write_image
from vaekit.io.latents import load_latents, save_latents
from vaekit.io.layout import resolve_model_dir
from vaekit.io.models import in_hub_cache, load_model, locate, save_model, write_config_fields, write_latent_scale
from vaekit.latents import export_latents, open_source
from vaekit.metrics.image import psnr
from vaekit.models.blocks import ConvAutoencoder
from vaekit.models.diffusers_autoencoders import NOT_CALIBRATED, DiffusersAutoencoder, set_rae_statistics
from vaekit.models.latent_scale import LatentNorm, measure_latent_scale, measure_normalised_latents, store_latent_scale
from vaekit.models.tiling import tiled_decode, tiled_encode
from vaekit.progress import DEVICE_HELP, progress, resolve_device
from vaekit.runs import CONFIG_FILE
from vaekit.training.distributed import process_state

log = logging.getLogger("vaekit")


def _image_model(args: argparse.Namespace):
    args.device = resolve_device(args.device)
    model = load_model(args.model, device=args.device)
    if not isinstance(model, (ConvAutoencoder, DiffusersAutoencoder)):
        raise VaekitError(f"{args.model} holds a {model.registry_name}; these commands need an image autoencoder "
                          "(autoencoder-kl, kl-f8, vq-f4, ..., a diffusers image autoencoder folder or an LDM "
                          "checkpoint)")
    _refuse_tiles(model, getattr(args, "tile", 0), args.model)
    return model


def _refuse_tiles(model, tile: int | None, source) -> None:
    """Tiling runs vaekit's own models (their GroupNorms see the whole image): a wrapped class is not tiled."""
    if tile and isinstance(model, DiffusersAutoencoder):
        raise VaekitError(f"--tile: {source} is a diffusers {model.class_name}, run as diffusers runs it, whole; "
                          "tiling takes vaekit's KL and VQ models (and AutoencoderKL/VQModel folders): leave --tile out")


def _encode(model, x: torch.Tensor, args: argparse.Namespace):
    if args.tile and max(x.shape[2:]) > args.tile:
        return tiled_encode(model, x, args.tile, args.overlap)
    return model.encode(x)


def _decode(model, z: torch.Tensor, size: tuple[int, int], args: argparse.Namespace) -> torch.Tensor:
    f = model.downsampling_factor
    if args.tile and max(z.shape[2:]) * f > args.tile:
        return tiled_decode(model, z, args.tile, args.overlap, size=size)
    return model.decode(z, size=size)


def image_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1] (clipped)."""
    return psnr((a.clamp(-1, 1) - b.clamp(-1, 1)).double().pow(2).mean().item())


def _each_image(paths: list[str], max_pixels: int, desc: str):
    """(path, image) for every readable file, read ahead in a background thread so that decoding the
    next files overlaps encoding this one; unreadable ones are logged and counted. A progress bar
    (``desc``) counts the files."""

    def read(path: str):
        try:
            return Path(path), read_image(path, max_pixels)
        except VaekitError as err:
            return Path(path), err

    skipped = []
    for path, image in progress(prefetch(map(read, paths), depth=4), total=len(paths), desc=desc, unit="image"):
        if isinstance(image, VaekitError):
            log.warning("skipped: %s", image)
            skipped.append(path)
        else:
            yield path, image
    if skipped:
        log.warning("skipped %d of %d files", len(skipped), len(paths))


@torch.no_grad()
def cmd_reconstruct(args: argparse.Namespace) -> int:
    model = _image_model(args)
    out = Path(args.output)
    done = 0
    for path, x in _each_image(args.images, args.max_pixels, "reconstruct"):
        x = x.to(args.device)
        posterior = _encode(model, x, args)
        z = posterior.sample() if args.sample else posterior.mode()
        reconstruction = _decode(model, z, tuple(x.shape[2:]), args)
        target = write_image(out / f"{path.stem}.png", reconstruction)
        print(f"{path}\t{x.shape[3]}x{x.shape[2]}\tPSNR {image_psnr(reconstruction, x):.2f} dB\t-> {target}")
        done += 1
    return 0 if done else 1


@torch.no_grad()
def cmd_encode(args: argparse.Namespace) -> int:
    model = _image_model(args)
    norm = model.latent_norm
    latents, logvars, names, sizes = [], [], [], []
    for path, x in _each_image(args.images, args.max_pixels, "encode"):
        posterior = _encode(model, x.to(args.device), args)
        z = posterior.sample() if args.sample else posterior.mode()
        latents.append(norm.scale(z)[0].cpu())
        if not (args.sample or posterior.deterministic):
            logvars.append(norm.scale_logvar(posterior.logvar)[0].cpu())
        names.append(path.name)
        sizes.append(tuple(x.shape[2:]))
    if not latents:
        return 1
    save_latents(args.output, latents, names, sizes, norm, logvars or None)
    kept = "posterior samples" if args.sample else "posterior means" + (" and log-variances" if logvars else "")
    print(f"{len(latents)} latents ({kept}, {norm.describe()} applied) -> {args.output}")
    return 0


@torch.no_grad()
def cmd_decode(args: argparse.Namespace) -> int:
    model = _image_model(args)
    stored = load_latents(args.latents)
    if stored.norm != model.latent_norm:
        log.warning("%s was normalised by %s; undoing that, not the model's %s", args.latents, stored.norm,
                    model.latent_norm)
    for latent, name, size in progress(zip(stored.latents, stored.names, stored.sizes), total=len(stored.names),
                                       desc="decode", unit="image"):
        z = stored.norm.unscale(latent[None].to(args.device))  # the file's own factors, which may not be the model's
        image = _decode(model, z, size, args)
        print(f"{name} -> {write_image(Path(args.output) / f'{Path(name).stem}.png', image)}")
    return 0


def cmd_export_latents(args: argparse.Namespace) -> int:
    state = process_state()
    device = state.device if args.device == "auto" else resolve_device(args.device)
    model = load_model(args.model, device=device)
    if model.latent_layout != "spatial":
        raise VaekitError(f"{args.model} holds a {model.registry_name}; export-latents needs an image autoencoder")
    _refuse_tiles(model, args.tile, args.model)
    if args.logvar:
        log.warning("--logvar is no longer needed: the log-variance of a stochastic posterior is always stored")
    manifest = export_latents(model.eval(), args.data, args.output, split=args.split, column=args.column,
                              resolution=args.resolution, shard_size=args.shard_size, batch_size=args.batch_size,
                              tile=args.tile or None, max_pixels=args.max_pixels, state=state,
                              dtype=None if args.dtype == "float32" else getattr(torch, args.dtype),
                              model_source=args.model)
    if state.is_main_process:
        print(f"{manifest['encoded']} of {manifest['count']} images -> {len(manifest['shards'])} shards in "
              f"{args.output} ({LatentNorm.from_manifest(manifest).describe()} applied; "
              f"{len(manifest['skipped'])} skipped, listed in manifest.json)")
    return 0 if manifest["encoded"] else 1


def _calibration_batches(model, args: argparse.Namespace):
    """Images in [-1, 1] to measure on: ``--data`` (a folder or Hugging Face dataset, centre crops at
    ``--resolution``), or, for a run directory without it, the run's own training examples."""

    run_dir = Path(args.model)
    if args.data is None:
        if not (run_dir / CONFIG_FILE).is_file():
            raise VaekitError(f"{args.model} is not a run directory: give --data, the images to measure the latents on")
        from vaekit.data import TrainingBatches, build_dataset
        from vaekit.data.ranges import range_map
        from vaekit.runs import read_run_config

        config = read_run_config(run_dir)
        data = build_dataset(config.data, "train")
        to_model = range_map(data.value_range, model.value_range)
        return (to_model(x) for x, _ in TrainingBatches(data, args.batch_size, config.seed).epoch(0))
    source = open_source(args.data, args.split, args.column)
    resolution = args.resolution or model.config.sample_size
    if resolution is None:
        raise VaekitError(f"{args.model} records no sample size: give --resolution, the image side to measure at")
    order = torch.randperm(len(source.names), generator=torch.Generator().manual_seed(0)).tolist()

    def batches():
        pending = []
        for index in order:
            try:
                pending.append(source.read(index, resolution, args.max_pixels))
            except VaekitError as err:
                log.warning("skipped: %s", err)
                continue
            if len(pending) == args.batch_size:
                yield torch.cat(pending)
                pending = []
        if pending:
            yield torch.cat(pending)

    return batches()


@torch.no_grad()
def cmd_calibrate(args: argparse.Namespace) -> int:
    if Path(args.model).is_file() and not args.output:
        raise VaekitError(f"{args.model} is a single weights file, which has no config to record the factor in: "
                          "give -o OUT to write a model folder")
    model = _image_model(args)
    if isinstance(model, DiffusersAutoencoder):
        return _calibrate_wrapped(model, args)
    before = model.latent_norm
    if args.shift and args.per_channel:
        raise VaekitError("--shift and --per-channel both centre the latents: give one of them")
    generator = torch.Generator(device=args.device).manual_seed(0)
    batches = progress(_calibration_batches(model, args), total=math.ceil(args.images / args.batch_size),
                       desc="calibrate", unit="batch")
    measured = measure_latent_scale(model, batches, generator,
                                    with_shift=args.shift or (model.config.shift_factor is not None and not args.per_channel),
                                    per_channel=args.per_channel, max_images=args.images)
    norm = measured.norm
    model_dir = None if args.output else (resolve_model_dir(args.model) if Path(args.model).exists()
                                          else locate(args.model))
    if model_dir is not None and in_hub_cache(model_dir):  # the hub's files: a copy, never an edit
        args.output = Path.cwd() / f"{Path(args.model).name}-calibrated"
        log.warning("%s is in the Hugging Face cache, which is not edited: writing the calibrated model to %s",
                    args.model, args.output)
    if args.output:
        store_latent_scale(model, norm)
        target = save_model(model, args.output)
    else:
        target = write_latent_scale(model_dir, norm)
    if norm.per_channel:
        found = (f"per-channel latents_mean {[round(v, 4) for v in norm.latents_mean]}, latents_std "
                 f"{[round(v, 4) for v in norm.latents_std]} (scaling factor 1)")
    else:
        shift = f", shift {norm.shift_factor:.5g} (was {before.shift_factor})" if norm.shift_factor is not None else ""
        found = f"scaling factor {norm.scaling_factor:.5g} (was {before.scaling_factor:g}){shift}"
    print(f"{found}, measured on posterior samples of {measured.images} images -> {target}")
    return 0


def _editable_folder(args: argparse.Namespace) -> Path:
    """The model folder whose config calibration may edit: ``-o OUT`` (a copy made there), a copy in the
    working directory for a model in the Hugging Face cache (never edited), else the model's own folder."""
    source = resolve_model_dir(args.model) if Path(args.model).exists() else locate(args.model)
    if args.output is None and in_hub_cache(source):
        args.output = Path.cwd() / f"{Path(args.model).name}-calibrated"
        log.warning("%s is in the Hugging Face cache, which is not edited: writing the calibrated model to %s",
                    args.model, args.output)
    if args.output is None:
        return source
    if Path(args.output).exists():
        raise VaekitError(f"-o {args.output} exists: give a new folder for the calibrated copy")
    return Path(shutil.copytree(source, args.output))


def _calibrate_wrapped(model: DiffusersAutoencoder, args: argparse.Namespace) -> int:
    """A wrapped family keeps its own convention: measure what it hands a diffusion model, report it, and
    write only the fields that convention has (none for NOT_CALIBRATED families, with the reason)."""
    name, norm = model.class_name, model.latent_norm
    if args.shift or args.per_channel:
        raise VaekitError(f"--shift and --per-channel choose vaekit's own conventions; a {name} keeps its family's "
                          f"({norm.describe()}): leave them out")
    if args.data is None:
        raise VaekitError(f"{args.model} is not a run directory: give --data, the images to measure the latents on")
    generator = torch.Generator(device=args.device).manual_seed(0)
    batches = progress(_calibration_batches(model, args), total=math.ceil(args.images / args.batch_size),
                       desc="calibrate", unit="batch")
    stats = measure_normalised_latents(model, batches, generator, args.images)
    low, high = stats.channel_std.aminmax()
    print(f"{name} latents for its diffusion model ({norm.describe()}), posterior samples of {stats.images} images: "
          f"mean {stats.mean:.4g}, std {stats.std:.4g}; per channel std {low:.4g} to {high:.4g}, mean "
          f"{stats.channel_mean.min():.4g} to {stats.channel_mean.max():.4g} (std near 1: the family's constants fit "
          "these images)")
    fields = model.calibrated_fields(stats.channel_mean, stats.channel_std, stats.std)
    if not fields:
        print(f"nothing written: {NOT_CALIBRATED[name]}")
        return 0
    folder = _editable_folder(args)
    config = json.loads((folder / "config.json").read_text())
    if name == "AutoencoderRAE":  # RAE keeps them in its weights (buffers) as well as its config
        set_rae_statistics(model.module, torch.tensor(fields["latents_mean"]), torch.tensor(fields["latents_std"]))

        def write(tmp: Path) -> None:  # weights and config together: a kill leaves the folder as it was
            model.module.save_pretrained(tmp, safe_serialization=True)
            write_json(tmp / "config.json", config)  # the config as it was (save_pretrained adds its own keys)
            write_config_fields(tmp, fields)

        target = write_folder(folder, write, keep_others=True) / "config.json"
        shown = (f"latents_mean and latents_std of shape {list(torch.tensor(fields['latents_mean']).shape)} (per "
                 "channel; per element where they were), applied inside its encode and undone inside its decode")
    else:
        target = write_config_fields(folder, fields)
        shown = ", ".join(f"{key} {[round(v, 4) for v in value] if isinstance(value, list) else f'{value:.5g}'}"
                          for key, value in fields.items())
    print(f"{shown} (was {norm.describe()}; nothing else changed) -> {target}")
    if args.output is None and not (folder.parent / CONFIG_FILE).is_file():
        # edited in place, and not the model of a vaekit run (whose folder vaekit wrote, no diffusion model behind it)
        was = "; ".join(f"{key} was {_rounded(config.get(key))}, now {_rounded(value)}" for key, value in fields.items())
        log.warning("%s was edited in place: %s. A pretrained %s family's diffusion model was trained on latents "
                    "normalised by the old values, so with this folder it gets latents it was not trained on; put the "
                    "old values back to use it with one (or calibrate with -o OUT to write a copy instead)",
                    folder, was, name)
    return 0


def _rounded(value):
    """A config value as calibrate prints it: numbers to 4-5 digits, lists element by element (nested for RAE)."""
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return float(f"{value:.5g}") if isinstance(value, (int, float)) else value


def cmd_convert(args: argparse.Namespace) -> int:
    overrides = {}
    if args.scaling_factor is not None:
        overrides["scaling_factor"] = args.scaling_factor
    if args.norm_groups is not None:
        overrides["norm_num_groups"] = args.norm_groups
    if (args.model is None) == (args.source is None):
        raise VaekitError("give the model to convert once: --model M (or a positional SOURCE)")
    args.source = args.model or args.source
    model = load_model(args.source, **overrides)
    if args.format == "diffusers":
        if model.latent_layout != "spatial":
            raise VaekitError("only image autoencoders (AutoencoderKL) export to diffusers")
        path = export_diffusers(model, args.output)
    else:
        path = save_model(model, args.output)
    print(f"{args.source} -> {path} ({args.format}; {sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


MODEL_HELP = ("a vaekit model folder or run, a diffusers image autoencoder folder (AutoencoderKL, VQModel, TAESD, DC-AE, "
              "FLUX.2, Qwen-Image, Wan, HunyuanImage, RAE, ...: docs/autoencoders.md), an LDM .ckpt/.safetensors, "
              "or a Hugging Face hub name (owner/name, owner/name/vae): its cache, else a download")


def model_options(parser: argparse.ArgumentParser, tiles: bool = True) -> None:
    parser.add_argument("--model", required=True, metavar="M",
                        help=MODEL_HELP)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    if tiles:
        parser.add_argument("--tile", type=int, default=0, metavar="PIXELS",
                            help="tile images larger than this many pixels a side (a multiple of f; 0 = never)")
        parser.add_argument("--overlap", type=int, default=32, metavar="PIXELS", help="tile overlap (default 32)")


def _add_reconstruct(commands) -> None:
    reconstruct = commands.add_parser(
        "reconstruct", help="encode and decode images, print PSNR per image",
        description="Encode each image, decode the posterior mode (or a sample) and write the reconstruction as "
        "OUT/<name>.png; prints the PSNR against the input. Sides not divisible by f are padded and cropped back.")
    reconstruct.add_argument("images", nargs="+", metavar="IMAGE")
    reconstruct.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    reconstruct.add_argument("--sample", action="store_true", help="decode a posterior sample instead of the mode")
    reconstruct.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (bomb guard)")
    model_options(reconstruct)
    reconstruct.set_defaults(func=cmd_reconstruct)


def _add_encode(commands) -> None:
    encode = commands.add_parser(
        "encode", help="images -> a safetensors file of latents",
        description="Encode images to the latents a diffusion model trains on, normalised by the model's factors "
        "((z − shift_factor)·scaling_factor, or per channel with latents_mean/latents_std): the scaled posterior "
        "mean and log-variance of each image (draw z = mean + exp(logvar/2)·ε, as Stage B does), or one sample "
        "with --sample; file names, image sizes and the factors are in the file's metadata.")
    encode.add_argument("images", nargs="+", metavar="IMAGE")
    encode.add_argument("-o", "--output", required=True, metavar="FILE.safetensors")
    encode.add_argument("--sample", action="store_true", help="store a posterior sample instead of the mode")
    encode.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (bomb guard)")
    model_options(encode)
    encode.set_defaults(func=cmd_encode)


def _add_decode(commands) -> None:
    decode = commands.add_parser("decode", help="a latents file -> images",
                                 description="Decode a file written by `vaekit encode` back to images OUT/<name>.png, "
                                 "cropped to the original sizes.")
    decode.add_argument("latents", metavar="LATENTS.safetensors")
    decode.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    model_options(decode)
    decode.set_defaults(func=cmd_decode)


def _add_export(commands) -> None:
    export = commands.add_parser(
        "export-latents", help="a folder or Hugging Face dataset -> sharded latents for a diffusion model",
        description="Encode every image of a folder (recursively) or a Hugging Face dataset to sharded safetensors "
        "files of latents (normalised posterior means and, for KL models, log-variances: a diffusion model trains "
        "on samples drawn from them, as `vaekit diffusion train` does), with each item's source and image "
        "size, and a manifest.json. Unreadable images are skipped and listed. Several processes: "
        "`accelerate launch -m vaekit export-latents ...` or --num-processes N; each writes its own shards. "
        "Interrupted? Run the same command again: finished shards are kept. Read back with "
        "vaekit.latents.LatentDataset(OUT).")
    export.add_argument("--data", required=True, metavar="SOURCE",
                        help="an image folder, a datasets save_to_disk folder, or hf:NAME (Hugging Face hub)")
    export.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
    export.add_argument("--split", default="train", help="dataset split (Hugging Face sources; default train)")
    export.add_argument("--column", default="image", help="image column (Hugging Face sources; default image)")
    export.add_argument("--resolution", type=int, metavar="PIXELS",
                        help="centre-crop and resize every image to this square size (default: native sizes)")
    export.add_argument("--shard-size", type=int, default=256, metavar="N", help="items per shard (default 256)")
    export.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="images encoded together (same-sized neighbours; default 8)")
    export.add_argument("--logvar", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    export.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="model precision (bfloat16/float16 on GPUs)")
    export.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images (bomb guard)")
    export.add_argument("--num-processes", type=int, default=1, metavar="N",
                        help="run N processes on this machine (one per GPU when there are GPUs)")
    export.add_argument("--model", required=True, metavar="M",
                        help=MODEL_HELP)
    export.add_argument("--device", default="auto",
                        help=DEVICE_HELP + "; with --num-processes, auto is each process's own GPU")
    export.add_argument("--tile", type=int, default=0, metavar="PIXELS",
                        help="tile images larger than this many pixels a side (0 = never)")
    export.set_defaults(func=cmd_export_latents)


def _add_calibrate(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="measure a model's latent scaling factor (and shift) and store it in the model",
        description="Measure the normalisation a latent diffusion model needs: 1/std of posterior samples "
        "z ~ q(z|x) over many images (LDM's recipe; SD's 0.18215) and, with --shift or when the model has one, "
        "their mean (SD3/FLUX's shift_factor). Stored in the model's config.json (a vaekit or diffusers folder; "
        "the final model of a run), where `vaekit encode` and `export-latents` read it. A run directory "
        "without --data is measured on its own training examples. A wrapped diffusers class (TAESD, DC-AE, FLUX.2, "
        "Qwen-Image, ...) keeps its family's convention: the statistics of the latents it hands its diffusion "
        "model are printed, and only that family's fields are written (scaling_factor, or latents_mean/latents_std; "
        "none for FLUX.2, TAESD and RAE, with the reason: docs/autoencoders.md).")
    calibrate.add_argument("--model", required=True, metavar="M",
                           help=MODEL_HELP + " (a single LDM file needs -o)")
    calibrate.add_argument("--data", metavar="SOURCE",
                           help="an image folder, a datasets save_to_disk folder, or hf:NAME (default for a run: its "
                           "training data)")
    calibrate.add_argument("--images", type=int, default=1024, metavar="N",
                           help="images to measure on (a seeded random choice; default 1024)")
    calibrate.add_argument("--resolution", type=int, metavar="PIXELS",
                           help="centre-crop and resize --data images to this (default: the model's sample_size)")
    calibrate.add_argument("--batch-size", type=int, default=8, metavar="N")
    calibrate.add_argument("--shift", action="store_true", help="measure a shift factor too (SD3/FLUX style)")
    calibrate.add_argument("--per-channel", action="store_true",
                           help="measure per-channel latents_mean / latents_std (diffusers' SDXL-style "
                           "normalisation), with scaling factor 1")
    calibrate.add_argument("--split", default="train", help="dataset split (Hugging Face sources)")
    calibrate.add_argument("--column", default="image", help="image column (Hugging Face sources)")
    calibrate.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images (bomb guard)")
    calibrate.add_argument("-o", "--output", metavar="OUT",
                           help="write the model with the measured factor here instead of updating it in place")
    calibrate.add_argument("--device", default="auto", help=DEVICE_HELP)
    calibrate.set_defaults(func=cmd_calibrate)


def _add_convert(commands) -> None:
    convert = commands.add_parser(
        "convert", help="convert weights: diffusers / LDM checkpoint / vaekit",
        description="Load a vaekit model folder, a diffusers AutoencoderKL or VQModel folder, or an original "
        "LDM/CompVis checkpoint (.ckpt read with torch.load(weights_only=True), never executing code; .safetensors; "
        "a full Stable Diffusion checkpoint's first_stage_model; a taming/LDM VQ checkpoint) and write it as a "
        "vaekit folder or a diffusers folder.")
    convert.add_argument("--model", metavar="M", help="what to convert: a vaekit model folder or run, a diffusers "
                         "folder, an LDM .ckpt/.safetensors, or a Hugging Face hub name")
    convert.add_argument("source", nargs="?", metavar="SOURCE", help="the same, as a positional (older spelling)")
    convert.add_argument("-o", "--output", required=True, metavar="OUT")
    convert.add_argument("--format", choices=["vaekit", "diffusers"], default="vaekit")
    convert.add_argument("--scaling-factor", type=float, help="record this scaling factor (LDM checkpoints do not)")
    convert.add_argument("--norm-groups", type=int, help="GroupNorm groups (not stored in weights; default 32)")
    convert.set_defaults(func=cmd_convert)


def cmd_compare(args: argparse.Namespace) -> int:
    from vaekit.compare import compare_models

    page = compare_models([*args.models, *args.model], args.data, args.output, args.resolution, args.batch_size,
                          args.device)
    print((page.parent / "compare.csv").read_text().rstrip())
    print(f"leaderboard: {page}")
    return 0


def _add_compare(commands) -> None:
    compare = commands.add_parser(
        "compare", help="the leaderboard: image autoencoders scored on the same folder, side by side",
        description="Score every model (vaekit or diffusers folders, runs, LDM/SD checkpoints, hub names: any "
        "image autoencoder `vaekit eval --model` takes) on every image of one folder at one resolution: "
        "compare.csv, compare.json and compare.html (the table, the same images decoded by each, whole and "
        "zoomed, and PSNR against the compression ratio).")
    compare.add_argument("models", nargs="*", metavar="MODEL")
    compare.add_argument("--model", action="append", default=[], metavar="M", help="a model (repeat it for each)")
    compare.add_argument("--data", required=True, metavar="FOLDER", help="the folder of images")
    compare.add_argument("--resolution", type=int, default=256,
                         help="short side resized to it, then a centre crop (default 256)")
    compare.add_argument("--batch-size", type=int, default=8, help="images a batch (default 8)")
    compare.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    compare.add_argument("--device", default="auto", help=DEVICE_HELP)
    compare.set_defaults(func=cmd_compare)


def add_commands(commands) -> None:
    _add_compare(commands)
    _add_reconstruct(commands)
    _add_encode(commands)
    _add_decode(commands)
    _add_export(commands)
    _add_calibrate(commands)
    _add_convert(commands)
