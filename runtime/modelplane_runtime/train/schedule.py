"""Learning-rate multipliers: linear warm-up, then cosine, linear or constant decay."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_multiplier(*, schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """step -> factor applied to the peak learning rate."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
