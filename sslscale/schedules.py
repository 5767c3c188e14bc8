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


def _half_cosine(step: int, total: int, start: float, end: float) -> float:
    """start at step 0, end at `total` (and after), along a half cosine."""
    progress = min(1.0, max(0, step) / max(1, total))
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


def cosine_momentum(step: int, total: int, base: float = 0.996, final: float = 1.0) -> float:
    """EMA teacher momentum (BYOL, Grill et al. 2020, and MoCo v3): tau = 1 - (1 - base)(cos(pi k / K) + 1) / 2 for
    final = 1, rising from `base` at step 0 to `final` at step `total` and held there."""
    return _half_cosine(step, total, base, final)


def teacher_temperature(step: int, warmup: int, start: float, end: float) -> float:
    """DINO's teacher temperature (Caron et al. 2021): linear from `start` at step 0 to `end` at step `warmup`,
    then `end`."""
    if step >= warmup:
        return end
    return start + (end - start) * max(0, step) / warmup


def cosine_weight_decay(step: int, total: int, start: float, end: float) -> float:
    """DINO's weight decay: from `start` at step 0 to `end` at step `total` along a half cosine, then `end`."""
    return _half_cosine(step, total, start, end)
