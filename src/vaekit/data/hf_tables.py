"""Reading Hugging Face ``datasets`` tables: the ``hf`` source's config, opening by hub name or local
folder (as a stream too), splits, the undecoded image column, label names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaekit.data.folder import check_fraction
from vaekit.data.transforms import CropSpec
from vaekit.errors import VaekitError


@dataclass
class HFConfig:
    path: str = ""
    """A dataset on the Hugging Face hub (needs internet, or the datasets cache) or a local folder."""
    image_column: str = "image"
    """The dataset column holding the images."""
    label_column: str | None = None
    """The column holding class labels (optional; null: unlabelled)."""
    train_split: str = "train"
    """The split to train on; the test split is held out from it (test_fraction) when the dataset has no test split."""
    test_split: str | None = "test"
    """Used when the dataset has it; otherwise a held-out part of the training split is used."""
    test_fraction: float = 0.1
    """Held out of the training split when there is no test split (map-style datasets)."""
    image_size: int = 64
    """Side of the examples: crops (random in training) after the short side is resized to short_side."""
    short_side: int | None = None
    """Resize so the short side is this before cropping; default image_size (crop the whole short side)."""
    flip: bool = False
    """Random horizontal flips in training (right for photographs, wrong for digits and text)."""
    grayscale: bool = False
    """Convert images to one channel."""
    max_images: int | None = None
    """Use only the first max_images rows of the training split (all of it by default)."""
    streaming: bool = False
    """Read the training split as a stream (the dataset is never downloaded or held whole)."""
    shuffle_buffer: int = 1000
    """Streaming: examples shuffled through a buffer of this size, differently each epoch (0: stream order)."""
    test_images: int = 1000
    """Streaming: held-out examples kept in memory — the head of the test split, or of the training
    stream (which training then skips) when there is no test split."""
    seed: int = 0
    """Seeds which examples are held out (and any augmentation)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is required: a Hugging Face dataset name or a local dataset folder")
        check_fraction(self.test_fraction)
        if self.image_size < 2:
            raise ValueError(f"image_size must be at least 2, got {self.image_size}")
        if self.short_side is not None and self.short_side < self.image_size:
            raise ValueError(f"short_side ({self.short_side}) must be at least image_size ({self.image_size})")
        if self.test_images < 1 or self.shuffle_buffer < 0:
            raise ValueError("test_images must be at least 1 and shuffle_buffer at least 0")

    def spec(self, training: bool) -> CropSpec:
        return CropSpec(self.image_size, self.short_side or self.image_size, random=training,
                        flip=training and self.flip, grayscale=self.grayscale)


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _describe(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def open_dataset(path: str, streaming: bool = False):
    """A ``DatasetDict``/``Dataset`` (or their iterable versions when ``streaming``) from a hub name or a
    local folder, or a one-line error."""
    import datasets

    local = Path(path).expanduser()
    if (local.is_absolute() or path.startswith((".", "~"))) and not local.exists():
        raise VaekitError(f"no such dataset folder: {path} (a hub name looks like 'user/name')")
    try:
        if is_saved_dataset(local):
            opened = datasets.load_from_disk(str(local))
            if not streaming:
                return opened
            if isinstance(opened, datasets.DatasetDict):
                return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in opened.items()})
            return opened.to_iterable_dataset()
        return datasets.load_dataset(path, streaming=streaming)
    except Exception as err:  # datasets raises many types (connection, file, format); all mean "cannot load"
        raise VaekitError(f"cannot load the Hugging Face dataset {path!r}: {_describe(err)}") from err


def splits_of(config: HFConfig, opened) -> dict:
    import datasets

    dict_types = (datasets.DatasetDict, datasets.IterableDatasetDict)
    splits = dict(opened) if isinstance(opened, dict_types) else {config.train_split: opened}
    if config.train_split not in splits:
        raise VaekitError(f"{config.path} has no split {config.train_split!r}; it has {', '.join(splits)}")
    return splits


def undecoded(table, config: HFConfig):
    """The table with its image column left as bytes/paths (decoded by us, lazily, with our guards)."""
    import datasets

    features = table.features or {}
    if config.image_column not in (features or {}) and config.image_column not in (table.column_names or []):
        raise VaekitError(f"{config.path} has no column {config.image_column!r}; its columns are "
                          f"{', '.join(table.column_names or list(features))} (set data.image_column)")
    if isinstance(features.get(config.image_column), datasets.Image):
        table = table.cast_column(config.image_column, datasets.Image(decode=False))
    return table


def class_names(table, config: HFConfig, values: list | None) -> list[str] | None:
    if config.label_column is None:
        return None
    feature = (table.features or {}).get(config.label_column)
    if feature is None:
        raise VaekitError(f"{config.path} has no column {config.label_column!r} (data.label_column)")
    if hasattr(feature, "names"):
        return list(feature.names)
    if values is None:
        raise VaekitError(f"data.label_column {config.label_column!r} of {config.path} is not a ClassLabel: a stream "
                          "cannot be scanned for its label names; use a ClassLabel column or streaming=false")
    return sorted({str(v) for v in values})


def label_indices(values: list, names: list[str], feature) -> np.ndarray:
    if hasattr(feature, "names"):
        return np.asarray(values, dtype=np.int64)
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[str(v)] for v in values], dtype=np.int64)
