"""``hf``: a Hugging Face ``datasets`` image dataset, by hub name or local path (``save_to_disk``
folders and anything ``load_dataset`` reads, e.g. an ``imagefolder``). Images are converted like a
folder's (odd modes, centre crop + resize); undecodable ones are skipped and counted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vaekit.data.base import ImageDataset
from vaekit.data.folder import prepare
from vaekit.errors import VaekitError
from vaekit.registry import DATASETS

log = logging.getLogger("vaekit")


@dataclass
class HFConfig:
    path: str = ""
    """A dataset on the Hugging Face hub (needs internet) or a local folder."""
    image_column: str = "image"
    label_column: str | None = None
    train_split: str = "train"
    test_split: str | None = "test"
    """Used when the dataset has it; otherwise test_fraction of the training split is held out."""
    test_fraction: float = 0.1
    image_size: int = 64
    grayscale: bool = False
    max_images: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is required: a Hugging Face dataset name or a local dataset folder")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _open(path: str):
    import datasets

    local = Path(path).expanduser()
    if (local.is_absolute() or path.startswith((".", "~"))) and not local.exists():
        raise VaekitError(f"no such dataset folder: {path} (a hub name looks like 'user/name')")
    try:
        if is_saved_dataset(local):
            return datasets.load_from_disk(str(local))
        return datasets.load_dataset(path)
    except Exception as err:  # datasets raises many types (connection, file, format); all mean "cannot load"
        raise VaekitError(f"cannot load the Hugging Face dataset {path!r}: {str(err).splitlines()[0][:300]}") from None


def _decode(value, size: int, grayscale: bool) -> np.ndarray:
    if isinstance(value, dict) and value.get("bytes") is not None:
        import io

        value = Image.open(io.BytesIO(value["bytes"]))
    if not isinstance(value, Image.Image):
        raise ValueError(f"not an image: {type(value).__name__}")
    value.load()
    return prepare(value, size, grayscale)


_LOADED: dict[str, dict] = {}


def _load(config: HFConfig) -> dict:
    """Both splits, decoded once per process (train and test are built from one load)."""
    key = repr(config)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = _decode_splits(config)
    return _LOADED[key]


def _decode_splits(config: HFConfig) -> dict:
    import datasets

    opened = _open(config.path)
    splits = opened if isinstance(opened, datasets.DatasetDict) else {config.train_split: opened}
    if config.train_split not in splits:
        raise VaekitError(f"{config.path} has no split {config.train_split!r}; it has {', '.join(splits)}")
    out = {}
    for name in ("train", "test"):
        split = config.train_split if name == "train" else config.test_split
        if split is None or split not in splits:
            continue
        table = splits[split]
        if config.image_column not in table.column_names:
            raise VaekitError(f"{config.path} has no column {config.image_column!r}; its columns are "
                              f"{', '.join(table.column_names)} (set data.image_column)")
        table = table.cast_column(config.image_column, datasets.Image(decode=False)) \
            if isinstance(table.features[config.image_column], datasets.Image) else table
        count = len(table) if config.max_images is None else min(len(table), config.max_images)
        images, labels, skipped = [], [], []
        for i in range(count):
            row = table[i]
            try:
                images.append(_decode(row[config.image_column], config.image_size, config.grayscale))
                if config.label_column:
                    labels.append(row[config.label_column])
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                skipped.append((f"{split}[{i}]", f"{type(err).__name__}: {err}"))
        if skipped:
            log.warning("skipped %d of %d images of %s[%s] that could not be decoded", len(skipped), count,
                        config.path, split)
        if not images:
            raise VaekitError(f"no decodable images in {config.path}[{split}]")
        names = None
        if config.label_column:
            feature = table.features[config.label_column]
            names = list(getattr(feature, "names", None) or sorted({str(v) for v in labels}))
            if not hasattr(feature, "names"):
                labels = [names.index(str(v)) for v in labels]
        out[name] = (np.stack(images), np.array(labels) if config.label_column else None, names, tuple(skipped))
    return out


@DATASETS.register("hf", HFConfig)
def hf(config: HFConfig, split: str) -> ImageDataset:
    loaded = _load(config)
    if "test" not in loaded:  # hold out a seeded fraction of the training split
        images, labels, names, skipped = loaded["train"]
        order = np.random.default_rng(config.seed).permutation(len(images))
        num_test = max(1, round(len(images) * config.test_fraction))
        index = np.sort(order[:num_test] if split == "test" else order[num_test:])
        return ImageDataset(images[index], None if labels is None else labels[index], names,
                            name=f"hf:{config.path}/{split}", skipped=skipped)
    images, labels, names, skipped = loaded[split]
    return ImageDataset(images, labels, names, name=f"hf:{config.path}/{split}", skipped=skipped)
