"""Training batches: the same sequence of global batches for any number of loader workers and
processes, resumable at any batch of an epoch.

A global batch is ``batch_size`` examples; process ``p`` of ``n`` takes every n-th of them. The order
of an epoch comes from (seed, epoch) and every example's augmentation from (seed, epoch, index), so
nothing about a batch depends on which worker or process built it.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from vaekit.data.base import ImageData, batch_loader
from vaekit.data.lazy import LazyImages
from vaekit.data.prefetch import prefetch


class EpochBatchSampler:
    """Batches of a permutation drawn from (seed, epoch); resumable mid-epoch; sharded across processes."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, num_processes: int = 1, process_index: int = 0):
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return batches_per_epoch(self.num_examples, self.batch_size, self.num_processes)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_examples)
        for b in range(self.start_batch, self.batches_per_epoch):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.process_index::self.num_processes].tolist()


def batches_per_epoch(num_examples: int, batch_size: int, num_processes: int) -> int:
    """Batches of an epoch; a last batch too small to give every process an example is dropped (an
    empty share would stall the processes' gradient exchange)."""
    batches = math.ceil(num_examples / batch_size)
    last = num_examples - (batches - 1) * batch_size
    return batches - 1 if batches > 1 and last < num_processes else batches


class TrainingBatches:
    """The global batches of a training set, epoch by epoch: ``epoch(e, start_batch)`` iterates this
    process's ``(images, labels)`` share of each batch from ``start_batch`` on.

    Without loader workers, a dataset that reads its examples (files, table rows: ``LazyImages``) is read
    two batches ahead in a background thread, so decoding overlaps the model's compute; starting another
    epoch stops the reader of the previous one first (a run that ends mid-epoch leaves one behind).
    """

    def __init__(self, dataset, batch_size: int, seed: int, num_processes: int = 1, process_index: int = 0,
                 num_workers: int = 0, pin_memory: bool = False):
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_processes, self.process_index = num_processes, process_index
        self.num_workers = num_workers
        self.read_ahead = num_workers == 0 and isinstance(dataset, LazyImages)
        self._reader: Iterator | None = None
        self.batches_per_epoch = batches_per_epoch(len(dataset), batch_size, num_processes)
        if isinstance(dataset, ImageData):
            self.sampler = EpochBatchSampler(len(dataset), batch_size, seed, num_processes, process_index)
            self.loader = batch_loader(dataset, batch_sampler=self.sampler, num_workers=num_workers,
                                       pin_memory=pin_memory)

    def global_batch_size(self, batch: int) -> int:
        """Examples in batch ``batch`` of an epoch, over all processes."""
        return min(self.batch_size, len(self.dataset) - batch * self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not isinstance(self.dataset, ImageData):  # a stream (data.streaming: true)
            return self.dataset.batches(epoch, start_batch, self.batch_size, self.num_processes, self.process_index,
                                        threads=self.num_workers)
        self.close()
        self.sampler.set_epoch(epoch, start_batch)
        # Loader workers are started by iter() below with a copy of the dataset as it is now, so the
        # epoch set here is the one they draw the augmentation of.
        self.dataset.set_epoch(epoch)
        if not self.read_ahead:
            return iter(self.loader)
        self._reader = prefetch(iter(self.loader), depth=2)
        return self._reader

    def close(self) -> None:
        """Stop the background reader of the last epoch, if it is still running."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
