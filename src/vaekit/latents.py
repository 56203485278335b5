"""Dataset → latents: the hand-off from an image autoencoder to a latent diffusion model.

``export_latents`` encodes every image of a folder or a Hugging Face dataset into sharded safetensors
files; ``LatentDataset`` reads them back as a torch ``Dataset``.

Layout of an export directory::

    export.json                 what is being exported (model, source, settings, item count); written first
    shard-00000.safetensors     items [0, S), shard-00001: [S, 2S), ... (S = shard_size)
    manifest.json               written last, after checking every input appears exactly once

Shard ``k`` holds, for every item of its range that could be read, ``mean.<index>`` (the normalised
posterior mean, ``(c, h, w)``) and, for a model with a stochastic posterior (KL), ``logvar.<index>`` (the
log-variance of the *normalised* latent); its metadata lists the items (index, source, image size) and
the skipped ones with the reason. A diffusion model trains on posterior samples drawn from the two
afresh each time (``models.latent_scale`` states the convention; Stage B does this), normalised as
``(z − shift_factor) · scaling_factor`` or, per channel, ``(z − latents_mean) · scaling_factor / latents_std``,
after folding p × p patches into channels where ``patch_size`` p > 1 (FLUX.2). The manifest records these
fields (a wrapped diffusers family's are its pipeline's, ``DiffusersAutoencoder.latent_norm``), the model's
class (``model_class``) and its weights' fingerprint; ``diffusion.sampling`` undoes exactly them.

Several processes (``accelerate launch -m vaekit export-latents ...``) split the shards round-robin and
each writes its own; shards are written atomically, so an interrupted export resumes by skipping the
shards already on disk, and nothing is encoded twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset

from vaekit.data.hf_tables import is_saved_dataset, open_dataset
from vaekit.data.lazy import find_images
from vaekit.data.photos import builtin_photographs
from vaekit.data.prefetch import prefetch
from vaekit.errors import VaekitError
from vaekit.io.atomic import write_json
from vaekit.io.images import DEFAULT_MAX_PIXELS, open_rgb, read_image, to_channels, to_tensor
from vaekit.io.latents import (FORMATS, MANIFEST_FILE, SPEC_FILE, format_for, open_shard, read_shard_metadata,
                               shard_name, write_shard)
from vaekit.models.latent_scale import LatentNorm
from vaekit.models.tiling import tiled_encode
from vaekit.progress import progress
from vaekit.training.distributed import process_state

log = logging.getLogger("vaekit")

BUILTIN_PHOTOS = "photos"
"""The word for the built-in photographs wherever a command takes --data."""

# ---------------------------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """The inputs of an export, in a fixed order: item i is ``names[i]``, read by ``read(i)``."""

    description: str
    names: list[str]

    def read(self, index: int, resolution: int | None, max_pixels: int) -> torch.Tensor:
        raise NotImplementedError


class _FolderSource(_Source):
    def __init__(self, root: Path):
        files = find_images(root)
        if not files:
            raise VaekitError(f"no image files in {root}")
        self.root = root
        super().__init__(str(root), [str(p.relative_to(root)) for p in files])

    def read(self, index: int, resolution: int | None, max_pixels: int) -> torch.Tensor:
        return read_image(self.root / self.names[index], max_pixels, resolution)


class _HFSource(_Source):
    def __init__(self, path: str, split: str, column: str):
        import datasets

        opened = open_dataset(path)
        if isinstance(opened, datasets.DatasetDict):
            if split not in opened:
                raise VaekitError(f"{path} has no split {split!r}; it has {', '.join(opened)}")
            opened = opened[split]
        if column not in opened.column_names:
            raise VaekitError(f"{path} has no column {column!r}; its columns are {', '.join(opened.column_names)}")
        if isinstance(opened.features[column], datasets.Image):
            opened = opened.cast_column(column, datasets.Image(decode=False))
        self.table, self.column = opened, column
        super().__init__(f"{path}[{split}]", [f"{split}[{i}]" for i in range(len(opened))])

    def read(self, index: int, resolution: int | None, max_pixels: int) -> torch.Tensor:
        value, name = self.table[index][self.column], self.names[index]
        if isinstance(value, dict) and value.get("bytes") is not None:
            return to_tensor(open_rgb(io.BytesIO(value["bytes"]), max_pixels, name), resolution)
        if isinstance(value, dict) and value.get("path"):
            return to_tensor(open_rgb(value["path"], max_pixels, name), resolution)
        raise VaekitError(f"cannot read {name} as an image (not an image: {type(value).__name__})")


class _BuiltinPhotos(_Source):
    """``photos``: the built-in photographs at their own size (the word, not a folder: ``./photos`` is one)."""

    def __init__(self):
        self.pictures = builtin_photographs()
        super().__init__("the built-in photographs", [f"{name}.png" for name in self.pictures])

    def read(self, index: int, resolution: int | None, max_pixels: int) -> torch.Tensor:
        return to_tensor(Image.fromarray(self.pictures[self.names[index].removesuffix(".png")]), resolution)


def open_source(data: str, split: str = "train", column: str = "image") -> _Source:
    """A folder of images, ``photos`` (the built-in photographs; a folder of that name is ``./photos``), or a
    Hugging Face dataset (``hf:NAME`` or a ``save_to_disk`` folder): one meaning in every command."""
    if data == BUILTIN_PHOTOS:
        return _BuiltinPhotos()
    if data.startswith("hf:"):
        return _HFSource(data[3:], split, column)
    path = Path(data).expanduser()
    if is_saved_dataset(path):
        return _HFSource(str(path), split, column)
    if not path.is_dir():
        raise VaekitError(f"no such folder: {data} (a Hugging Face dataset is written hf:user/name)")
    return _FolderSource(path)


# ---------------------------------------------------------------------------------------------- export


def fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _read_items(source: _Source, indices: list[int], resolution: int | None, max_pixels: int) -> Iterator:
    """(index, image or the reason it could not be read), in order."""
    for i in indices:
        try:
            yield i, source.read(i, resolution, max_pixels)
        except VaekitError as err:
            yield i, str(err)


@torch.no_grad()
def _encode_batch(model, images: list[torch.Tensor], tile: int | None):
    """(normalised means, their log-variances or None for a point-mass posterior), float32 on the CPU."""

    x = to_channels(torch.cat(images), model.config.in_channels)  # a grayscale VAE takes the images' luma
    x = x.to(next(model.parameters()).device, next(model.parameters()).dtype)
    if tile and max(x.shape[2:]) > tile:
        posterior = tiled_encode(model, x, tile)
    else:
        posterior = model.encode(x)
    norm = model.latent_norm
    mean = norm.scale(posterior.mean.float()).cpu()
    logvar = None if model.deterministic else norm.scale_logvar(posterior.logvar.float()).cpu()
    return mean, logvar


def _export_spec(model, source: _Source, shard_size: int, resolution: int | None, tile: int | None,
                 dtype: torch.dtype | None) -> dict:
    """What an export is: a resumed export must match it field for field. The normalisation applied is the
    model's ``latent_norm`` (a wrapped diffusers family's is its pipeline's), recorded in full so that the
    latents are decoded by undoing exactly it; ``latent_channels`` and ``downsampling_factor`` are of the
    exported latents (FLUX.2's 2 × 2 patches: 4× the channels at twice the factor)."""
    norm = model.latent_norm
    return {"format": format_for(norm.patch_size), "source": source.description, "count": len(source.names),
            "shard_size": shard_size, "resolution": resolution, "logvar": not model.deterministic, "tile": tile,
            "model": model.registry_name,
            "model_class": getattr(model, "class_name", type(model).__name__),
            "model_fingerprint": fingerprint(model), **norm.to_dict(),
            "dtype": str(dtype or next(model.parameters()).dtype).removeprefix("torch."),
            "latent_channels": _latent_channels(model) * norm.patch_size ** 2,
            "downsampling_factor": model.downsampling_factor * norm.patch_size, "names_digest": hashlib.sha256(
                "\n".join(source.names).encode()).hexdigest()[:16]}


def _latent_channels(model) -> int:
    """Channels of the latents ``model.encode`` gives: its config's, or, for a model whose latent width is its
    pretrained encoder's (RAE: the encoder's hidden size), the model's own."""
    channels = getattr(model, "latent_channels", None)
    return channels if channels is not None else model.config.latent_channels


SPEC_DEFAULTS = {"patch_size": 1}
"""What a spec written before a field existed meant by its absence."""


def _differences(previous: dict, spec: dict) -> list[str]:
    """The fields in which an export on disk (``previous``, perhaps written by an earlier version) and ``spec``
    differ. Fields an older spec lacks take their defaults; ``model_class``, absent from older specs, is not
    compared there (the fingerprint still is); ``format`` is not compared between formats read here, as it
    follows from ``patch_size``, which is."""
    previous, spec = {**SPEC_DEFAULTS, **previous}, {**SPEC_DEFAULTS, **spec}
    ignored = {"format"} if previous.get("format") in FORMATS else set()
    if "model_class" not in previous:
        ignored.add("model_class")
    return sorted(key for key in spec.keys() | previous.keys()
                  if key not in ignored and previous.get(key) != spec.get(key))


def _claim_spec(output: Path, spec: dict, state) -> None:
    """Refuse a directory that holds an export with other settings; then the main process writes the spec."""
    spec_path = output / SPEC_FILE
    if spec_path.is_file():
        changed = _differences(json.loads(spec_path.read_text()), spec)
        if changed:
            raise VaekitError(f"{output} holds an export with other settings ({', '.join(changed)} differ); "
                              "resume with the same ones, or export into a new directory")
    state.wait_for_everyone()
    if state.is_main_process:
        write_json(spec_path, spec)
    state.wait_for_everyone()


def _write_shard_of(k: int, items: Iterator, model, source: _Source, spec: dict, output: Path, batch_size: int,
                    tile: int | None) -> int:
    """Encode shard ``k``'s items (same-sized neighbours batched) and write it; returns the images encoded."""
    tensors, listed, skipped = {}, [], []
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        mean, var = _encode_batch(model, [image for _, image in pending], tile)
        for row, (i, image) in enumerate(pending):
            tensors[f"mean.{i}"] = mean[row]
            if var is not None:
                tensors[f"logvar.{i}"] = var[row]
            listed.append({"index": i, "source": source.names[i], "size": list(image.shape[2:])})
        pending.clear()

    shard_size = spec["shard_size"]
    for _ in range(k * shard_size, min(spec["count"], (k + 1) * shard_size)):
        i, image = next(items)
        if isinstance(image, str):
            log.warning("skipped: %s", image)
            skipped.append({"index": i, "source": source.names[i], "reason": image})
            continue
        if pending and (len(pending) == batch_size or pending[0][1].shape != image.shape):
            flush()
        pending.append((i, image))
    flush()
    write_shard(output / shard_name(k), k, tensors, listed, skipped, spec["model_fingerprint"], spec["format"])
    return len(listed)


def export_latents(model, data: str, output: str | Path, *, split: str = "train", column: str = "image",
                   resolution: int | None = None, shard_size: int = 256, batch_size: int = 8,
                   tile: int | None = None, max_pixels: int | None = None, dtype: torch.dtype | None = None,
                   prefetch_depth: int = 16, state=None, model_source: str | Path | None = None) -> dict:
    """Encode every image of ``data`` (folder or Hugging Face dataset) into shards under ``output``.

    Runs in every process of an Accelerate/torchrun launch (``state``: an accelerate ``PartialState``,
    created when not given): process p writes shards p, p + N, ...; the main process then checks that
    every input appears exactly once and writes the manifest, which it returns. Shards already on disk
    (from an interrupted run with the same settings) are kept, not re-encoded. ``model_source``: where
    ``model`` was loaded from, recorded in the manifest for ``vaekit diffusion sample``. ``dtype``: encode
    in this precision (bfloat16/float16 on GPUs); the manifest's fingerprint is of the weights as given,
    so the float32 model decodes the samples.
    """
    if shard_size < 1 or batch_size < 1:
        raise VaekitError("shard_size and batch_size must be at least 1")
    state = state or process_state()
    output = Path(output)
    source = open_source(data, split, column)
    count, shards = len(source.names), math.ceil(len(source.names) / shard_size)
    spec = _export_spec(model, source, shard_size, resolution, tile, dtype)
    _claim_spec(output, spec, state)
    if dtype is not None:
        model = model.to(dtype)

    mine = [k for k in range(shards) if k % state.num_processes == state.process_index]
    todo = [k for k in mine if not (output / shard_name(k)).is_file()]
    if len(todo) < len(mine):
        log.info("process %d: %d of its %d shards already done, resuming", state.process_index,
                 len(mine) - len(todo), len(mine))
    indices = [i for k in todo for i in range(k * shard_size, min(count, (k + 1) * shard_size))]
    reads = _read_items(source, indices, resolution, max_pixels or DEFAULT_MAX_PIXELS)
    items = iter(progress(prefetch(reads, prefetch_depth), total=len(indices), desc="export", unit="image"))
    started = time.perf_counter()
    encoded = sum(_write_shard_of(k, items, model, source, spec, output, batch_size, tile) for k in todo)
    if todo:
        log.info("process %d: %d images in %d shards, %.1f images/s", state.process_index, encoded, len(todo),
                 encoded / max(time.perf_counter() - started, 1e-9))
    state.wait_for_everyone()
    source_of_model = None if model_source is None else (
        str(Path(model_source).resolve()) if Path(model_source).exists() else str(model_source))
    manifest = (_check_and_write_manifest(output, spec, shards, state.num_processes, source_of_model)
                if state.is_main_process else None)
    state.wait_for_everyone()
    return manifest if manifest is not None else json.loads((output / MANIFEST_FILE).read_text())


def _check_and_write_manifest(output: Path, spec: dict, shards: int, processes: int, model_source: str | None) -> dict:
    seen: dict[int, str] = {}
    duplicates, entries, skipped = [], [], []
    for k in range(shards):
        path = output / shard_name(k)
        if not path.is_file():
            raise VaekitError(f"{path} is missing: the export did not finish; run the same command again to resume")
        meta = read_shard_metadata(path)
        if meta["model_fingerprint"] != spec["model_fingerprint"]:
            raise VaekitError(f"{path} was written by another model; remove it and resume")
        for item in meta["items"] + meta["skipped"]:
            if item["index"] in seen:
                duplicates.append(item["index"])
            seen[item["index"]] = shard_name(k)
        entries.append({"file": shard_name(k), "items": len(meta["items"]), "skipped": len(meta["skipped"])})
        skipped += meta["skipped"]
    missing = sorted(set(range(spec["count"])) - set(seen))
    if duplicates or missing:
        raise VaekitError(f"the export is inconsistent: {len(missing)} input(s) missing (first: {missing[:5]}), "
                          f"{len(duplicates)} duplicated (first: {duplicates[:5]})")
    manifest = {**spec, "encoded": spec["count"] - len(skipped), "skipped": skipped, "shards": entries,
                "processes": processes,
                # where the VAE came from (a folder, made absolute, or a hub name): what decodes the samples of a
                # diffusion model trained on these latents
                "model_source": model_source}
    write_json(output / MANIFEST_FILE, manifest)
    if skipped:
        log.warning("skipped %d of %d images (listed in %s)", len(skipped), spec["count"], output / MANIFEST_FILE)
    return manifest


# ---------------------------------------------------------------------------------------------- reading


class LatentDataset(Dataset):
    """The items of an export directory as a torch ``Dataset``, in input order (skipped inputs left out).

    ``dataset[i]`` is a dict: ``latent`` (the normalised posterior mean, ``(c, h, w)``), ``logvar`` (its
    log-variance, for a stochastic posterior), ``index`` (position in the source), ``source`` (file name or
    ``split[row]``), ``size`` ((H, W) of the encoded image). ``norm`` says how the latents were normalised.
    Shards are memory-mapped and opened lazily, so loader workers each open their own.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise VaekitError(f"{directory} has no {MANIFEST_FILE}: not a finished latent export "
                              "(run vaekit export-latents again to complete it)")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") not in FORMATS:
            raise VaekitError(f"{manifest_path} is not a {' or '.join(FORMATS)} manifest (format "
                              f"{self.manifest.get('format')!r}; a newer vaekit may read it)")
        try:
            self.norm = LatentNorm.from_manifest(self.manifest)
        except (KeyError, TypeError, ValueError) as err:
            raise VaekitError(f"{manifest_path} does not record a usable latent normalisation: {err}") from None
        self.items: list[tuple[str, dict]] = []
        for entry in self.manifest["shards"]:
            meta = read_shard_metadata(self.directory / entry["file"])
            self.items += [(entry["file"], item) for item in meta["items"]]
        self.items.sort(key=lambda pair: pair[1]["index"])
        self._handles: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}  # open files stay with their process

    def __getitem__(self, i: int) -> dict:
        file, item = self.items[i]
        if file not in self._handles:
            self._handles[file] = open_shard(self.directory / file)
        handle = self._handles[file]
        out = {"latent": handle.get_tensor(f"mean.{item['index']}"), "index": item["index"],
               "source": item["source"], "size": tuple(item["size"])}
        if self.manifest["logvar"]:
            out["logvar"] = handle.get_tensor(f"logvar.{item['index']}")
        return out
