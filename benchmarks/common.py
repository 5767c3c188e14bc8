"""What the benchmark scripts share: a result line, medians of repeats, and the JSON each script writes.

A line compares our path with the plain alternative doing the same work in the same run: `ratio` is ours / plain
for rates (higher is better) and plain / ours for seconds, so above 1 always means sslscale is ahead.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable, Iterator


def line(section: str, what: str, ours: float, plain: float | None, unit: str, note: str = "",
         lower_is_better: bool = False) -> dict:
    ratio = None if not plain or not ours else (plain / ours if lower_is_better else ours / plain)
    return {"section": section, "what": what, "ours": ours, "plain": plain, "unit": unit, "ratio": ratio,
            "note": note}


def median(values) -> float:
    return float(statistics.median(values))


def rates(batches: Iterator, count: Callable, samples: int, windows: int) -> list[float]:
    """samples/s of `windows` consecutive windows of about samples/windows each, after one warm-up batch
    (process pools, Ray tasks and the first shard are start-up, not ingest)."""
    count(next(batches))
    out = []
    for _ in range(windows):
        seen, t0 = 0, time.perf_counter()
        while seen < samples // windows:
            seen += count(next(batches))
        out.append(seen / (time.perf_counter() - t0))
    return out


def write(path: str, lines: list[dict], **extra) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"lines": lines, **extra}, f, indent=1)


def show(lines: list[dict]) -> None:
    for x in lines:
        plain = "" if x["plain"] is None else f" | plain {x['plain']:,.1f}"
        ratio = "" if x["ratio"] is None else f" | ratio {x['ratio']:.2f}"
        print(f"[{x['section']}] {x['what']}: ours {x['ours']:,.1f}{plain} {x['unit']}{ratio}", flush=True)
