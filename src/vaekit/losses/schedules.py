"""Schedules over optimizer steps: the KL warm-up and the learning rate."""

from __future__ import annotations

import math
from typing import Literal


def linear_warmup(step: int, warmup_steps: int) -> float:
    """0 at step 0, rising linearly to 1 at ``warmup_steps`` and 1 after; 1 throughout when warmup_steps = 0."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int,
                         schedule: Literal["constant", "cosine"]) -> float:
    """Linear warm-up over ``warmup_steps`` (the first step at 1/warmup_steps), then constant, or cosine
    decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
