"""``hf``: a Hugging Face ``datasets`` image dataset, by hub name or local path (``save_to_disk``
folders and anything ``load_dataset`` reads, e.g. an ``imagefolder``), read lazily.

A map-style dataset (Arrow, memory-mapped) is read row by row as examples are asked for; with
``streaming: true`` the rows come as a stream (``load_dataset(..., streaming=True)``; a ``save_to_disk``
folder is streamed from its Arrow files) that is never held whole, shuffled per epoch through a
buffer. Either way, training examples are random crops (random flips with ``flip: true``) drawn from
(seed, epoch, index), held-out examples centre crops; undecodable rows are skipped and named.
"""

from __future__ import annotations

import numpy as np

from vaekit.data.folder import split_items
from vaekit.data.hf_tables import HFConfig, class_names, label_indices, open_dataset, splits_of, undecoded
from vaekit.data.lazy import LazyImages, RowSource
from vaekit.data.streaming import StreamingImages, held_out_stream
from vaekit.errors import VaekitError
from vaekit.registry import DATASETS


@DATASETS.register("hf", HFConfig)
def hf(config: HFConfig, split: str):
    """A Hugging Face dataset (hub name or saved folder), random crops for training; streamed with streaming=true."""
    if config.streaming:
        return StreamingImages(config) if split == "train" else held_out_stream(config)
    splits = splits_of(config, open_dataset(config.path))
    own_test = config.test_split is not None and config.test_split in splits
    split_name = config.test_split if split == "test" and own_test else config.train_split
    table = undecoded(splits[split_name], config)
    if split_name == config.train_split and config.max_images is not None:
        table = table.select(range(min(len(table), config.max_images)))
    items = np.arange(len(table)) if own_test else split_items(len(table), config.test_fraction, config.seed, split)
    if len(table) == 0:
        raise VaekitError(f"{config.path}[{split_name}] has no rows")
    labels = names = None
    if config.label_column:
        values = list(table[config.label_column]) if config.label_column in table.column_names else None
        names = class_names(table, config, values)
        labels = label_indices(values, names, table.features[config.label_column])[items]
    return LazyImages(RowSource(table, config.image_column, split_name), items, config.spec(split == "train"),
                      config.seed, labels, names, name=f"hf:{config.path}/{split}")

