"""Exponential moving average of a model's weights, with LDM's warm-up."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """``shadow ← d · shadow + (1 − d) · weights`` after every optimizer step, with the decay warming up as
    ``d = min(decay, (1 + n) / (10 + n))`` after n updates (LDM's LitEma): a plain average with
    d = 0.999 would still hold ~37 % of the random initialisation after 1,000 steps; with the warm-up
    the first updates move the shadow most of the way. Buffers are copied; parameters that do not train
    (a frozen encoder) are copied too, so they stay bitwise the model's."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be between 0 and 1, got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        for shadow, weight in zip(self.shadow.parameters(), model.parameters()):
            if weight.requires_grad:
                shadow.lerp_(weight.detach(), 1.0 - decay)
            else:
                shadow.copy_(weight)
        for shadow, buffer in zip(self.shadow.buffers(), model.buffers()):
            shadow.copy_(buffer)
        self.num_updates += 1
