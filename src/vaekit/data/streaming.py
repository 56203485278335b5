"""A streamed Hugging Face dataset (``data.streaming: true``) as a sequence of global batches.

The stream is read once per epoch, in one background thread, and never held whole; each process
decodes only its share of every global batch (every n-th example), in ``train.num_workers`` threads
(Pillow decodes and resizes without the GIL). Example ``k`` of an epoch — its position in the
(shuffled) stream — gets its random crop and flip from (seed, epoch, k), so the batches are the same
for any number of threads or processes, and a resumed run skips the batches already done without
decoding them. An undecodable row is replaced by the next readable row of the same global batch.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from vaekit.data.base import ImageDataset, Labelled
from vaekit.data.hf_tables import HFConfig, class_names, is_saved_dataset, open_dataset, splits_of, undecoded
from vaekit.data.lazy import READ_ERRORS, picture_from_cell
from vaekit.data.prefetch import prefetch
from vaekit.data.transforms import CropSpec, example_draws, to_batch
from vaekit.errors import VaekitError

log = logging.getLogger("vaekit")


def _stream_length(config: HFConfig, split: str, stream) -> int | None:
    splits = getattr(getattr(stream, "info", None), "splits", None) or {}
    if split in splits and splits[split].num_examples:
        return int(splits[split].num_examples)
    local = Path(config.path).expanduser()
    if is_saved_dataset(local):
        import datasets

        opened = datasets.load_from_disk(str(local))
        return len(opened[split] if isinstance(opened, datasets.DatasetDict) else opened)
    return None


def _label(row: dict, config: HFConfig) -> int:
    return int(row[config.label_column]) if config.label_column else -1


class StreamingImages(Labelled):
    """The training split of a streamed dataset. Has the attributes of ``ImageData`` that training
    uses (shape, labels, length, value range, skipped) but no random access: read it with ``batches``."""

    value_range = (0.0, 1.0)

    def __init__(self, config: HFConfig):
        self.config = config
        splits = splits_of(config, open_dataset(config.path, streaming=True))
        own_test = config.test_split is not None and config.test_split in splits
        stream = undecoded(splits[config.train_split], config)
        self.held_out = 0 if own_test else config.test_images
        length = _stream_length(config, config.train_split, stream)
        if length is not None:
            length -= self.held_out
        if config.max_images is not None:
            length = config.max_images if length is None else min(length, config.max_images)
        if length is None:
            raise VaekitError(f"{config.path} does not say how many rows its {config.train_split!r} split has, which "
                              "a stream needs for its epochs and learning-rate schedule: set data.max_images")
        if length < 1:
            raise VaekitError(f"the {config.train_split!r} stream of {config.path} has no rows left for training "
                              f"after the {self.held_out} held out (data.test_images)")
        self.length = length
        self.stream = stream.skip(self.held_out) if self.held_out else stream
        self.class_names = class_names(stream, config, None) or []
        self.spec: CropSpec = config.spec(training=True)
        self.name = f"hf:{config.path}/train (streamed)"
        self.skipped: list[tuple[str, str]] = []

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.spec.channels, self.spec.size, self.spec.size

    def __len__(self) -> int:
        return self.length

    def rows(self, epoch: int) -> Iterator[dict]:
        """The epoch's rows in order: shuffled through the buffer with a seed that depends on the epoch."""
        stream = self.stream
        if self.config.shuffle_buffer:
            stream = stream.shuffle(seed=self.config.seed, buffer_size=self.config.shuffle_buffer)
            stream.set_epoch(epoch)
        return itertools.islice(iter(stream), self.length)

    def _decode(self, rows: list[tuple[int, dict]], slot: int, epoch: int) -> tuple[np.ndarray, int] | None:
        """The example at ``slot`` of a global batch, or the next readable one of the batch after it."""
        k = rows[slot][0]
        for offset in range(len(rows)):
            position, row = rows[(slot + offset) % len(rows)]
            try:
                array = picture_from_cell(row[self.config.image_column], self.spec, example_draws(self.config.seed, epoch, k))
                return array, _label(row, self.config)
            except READ_ERRORS as err:
                reason = f"{type(err).__name__}: {err}"
                if offset == 0:
                    self.skipped.append((f"{self.config.train_split}[position {position} of epoch {epoch}]", reason))
                    log.warning("skipped row %d of epoch %d of %s, which cannot be read as an image (%s)", position,
                                epoch, self.name, reason)
        return None

    def batches(self, epoch: int, start_batch: int, batch_size: int, num_processes: int = 1, process_index: int = 0,
                threads: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of each global batch of ``batch_size`` rows, from batch ``start_batch`` on."""

        def produce() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            pool = ThreadPoolExecutor(threads, thread_name_prefix="vaekit-decode") if threads else None
            try:
                rows = enumerate(self.rows(epoch))
                for _ in itertools.islice(rows, start_batch * batch_size):
                    pass
                while batch := list(itertools.islice(rows, batch_size)):
                    if len(batch) < num_processes:
                        return  # too few rows left to give every process one: dropped, like the map-style sampler
                    slots = range(process_index, len(batch), num_processes)
                    decode = lambda slot: self._decode(batch, slot, epoch)  # noqa: E731
                    examples = [e for e in (pool.map(decode, slots) if pool else map(decode, slots)) if e is not None]
                    if not examples:
                        raise VaekitError(f"no row of a batch of {self.name} can be read as an image")
                    yield (to_batch([a for a, _ in examples]),
                           torch.tensor([label for _, label in examples], dtype=torch.int64))
            finally:
                if pool is not None:
                    pool.shutdown(wait=True)

        return prefetch(produce(), depth=2)


def held_out_stream(config: HFConfig) -> ImageDataset:
    """The streamed dataset's held-out examples, in memory: the first ``test_images`` rows of its test
    split, or of its training stream (which training then skips) when it has none."""
    splits = splits_of(config, open_dataset(config.path, streaming=True))
    own_test = config.test_split is not None and config.test_split in splits
    stream = undecoded(splits[config.test_split if own_test else config.train_split], config)
    spec = config.spec(training=False)
    images, labels, skipped = [], [], []
    for i, row in enumerate(itertools.islice(iter(stream), config.test_images)):
        try:
            images.append(picture_from_cell(row[config.image_column], spec, None))
            labels.append(_label(row, config))
        except READ_ERRORS as err:
            skipped.append((f"held-out row {i}", f"{type(err).__name__}: {err}"))
    if not images:
        raise VaekitError(f"no readable held-out image in the first {config.test_images} rows of {config.path}")
    names = class_names(stream, config, None)
    return ImageDataset(to_batch(images), np.array(labels) if names else None, names,
                        name=f"hf:{config.path}/test (streamed)", skipped=skipped)
