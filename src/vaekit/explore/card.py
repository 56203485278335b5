"""The model card: layers with output shapes and parameter counts, compression ratio."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn



@torch.no_grad()
def layer_table(model: nn.Module, example: torch.Tensor, label: torch.Tensor | None = None,
                call: Callable[[], object] | None = None) -> list[dict]:
    """Rows ``{name, type, output_shape, parameters}`` for every leaf layer, in call order, from
    encoding ``example`` ``(1, C, H, W)`` and decoding its mean (or from ``call()``, for other models)."""
    rows: list[dict] = []
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None and name:
            def record(mod, args, output, name=name):
                rows.append({"name": name, "type": type(mod).__name__,
                             "output_shape": list(output.shape[1:]) if isinstance(output, torch.Tensor) else "",
                             "parameters": sum(p.numel() for p in mod.parameters(recurse=False))})
            hooks.append(module.register_forward_hook(record))
    try:
        if call is not None:
            call()
        else:
            label = model.labels_for(label)
            model.decode(model.encode(example, label).mean, label)
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def compression_ratio(input_shape, latent_shape) -> float:
    """Input values per latent value, e.g. 256 / 8 = 32 for a 16×16 image and an 8-D code."""
    return math.prod(input_shape) / math.prod(latent_shape)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
