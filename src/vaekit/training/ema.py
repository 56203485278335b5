"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """``shadow ← decay · shadow + (1 − decay) · weights`` after every optimizer step; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be between 0 and 1, got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, weight in zip(self.shadow.parameters(), model.parameters()):
            shadow.lerp_(weight.detach(), 1.0 - self.decay)
        for shadow, buffer in zip(self.shadow.buffers(), model.buffers()):
            shadow.copy_(buffer)
