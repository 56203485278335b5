"""Weight schedules over optimizer steps."""


def linear_warmup(step: int, warmup_steps: int) -> float:
    """0 at step 0, rising linearly to 1 at ``warmup_steps`` and 1 after; 1 throughout when warmup_steps = 0."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)
