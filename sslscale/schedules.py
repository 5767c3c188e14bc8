"""Schedules as pure functions of the optimizer step (1-based), so a resumed run recomputes them exactly."""
from __future__ import annotations

import math


def warmup_cosine(step: int, *, total: int, warmup: int, peak: float, floor_ratio: float = 0.0) -> float:
    """Linear warmup from peak/warmup to peak over `warmup` steps, then cosine decay to peak * floor_ratio at `total`."""
    if warmup and step <= warmup:
        return peak * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak * floor_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
