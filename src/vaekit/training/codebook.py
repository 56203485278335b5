"""The VQ codebook's own update (moving averages, dead-code restarts), once per optimizer step, from the
statistics of the step's whole global batch: summed over its micro-batches here and over the processes
with the collectives of ``training.distributed``, so every process updates its codebook identically and
N processes update it as one process would on the same global batch."""

from __future__ import annotations

import torch

from vaekit.training.distributed import gather_examples, sum_over_processes


class CodebookUpdate:
    """Collects a step's quantiser statistics (``add`` after each micro-batch's forward pass) and applies
    them (``apply`` after the optimizer step)."""

    def __init__(self, model, frozen: bool):
        quantizer = model.quantize if getattr(model, "regularizer", None) == "vq" else None
        # A frozen codebook (train.decoder_only) keeps its codes: no moving averages, no restarts.
        self.quantizer = quantizer if quantizer is not None and quantizer.updates_codebook and not frozen else None
        self.counts = self.sums = None
        self.vectors: list[torch.Tensor] = []

    @property
    def active(self) -> bool:
        return self.quantizer is not None

    def add(self, output) -> None:
        if self.quantizer is None:
            return
        quantized = output.quantized
        counts, sums = self.quantizer.code_sums(quantized.vectors, quantized.indices)
        self.counts = counts if self.counts is None else self.counts + counts
        self.sums = sums if self.sums is None else self.sums + sums
        if self.quantizer.dead_code_threshold is not None:
            batch = quantized.indices.shape[0]
            self.vectors.append(gather_examples(quantized.vectors.view(batch, -1, quantized.vectors.shape[1])))

    def apply(self, finite: bool, generator: torch.Generator) -> int:
        """Update the codebook (when the step was taken); returns the number of codes restarted."""
        if self.quantizer is None or self.counts is None:
            return 0
        restarted = 0
        if finite:
            counts, sums = sum_over_processes(self.counts, self.sums)
            vectors = (torch.cat(self.vectors).flatten(0, 1) if self.vectors
                       else torch.empty(0, sums.shape[1], device=sums.device))
            restarted = self.quantizer.update_codebook(counts, sums, vectors, generator)
        self.counts = self.sums = None
        self.vectors = []
        return restarted
