"""What the benchmark scripts share: a result line from repeated measurements, its table cells, the repeats taken
in turns, one timed window of a stream, and the JSON each script writes.

A line compares our path with the plain alternative doing the same work, measured `repeats` times. Each repeat
measures ours and then plain back to back (`interleave`), so that a drift of the machine's speed hits both sides
alike, and gives one ratio: ours / plain for rates (higher is better), plain / ours for seconds, so above 1 always
means sslscale is ahead. A line keeps every repeat's value and shows the median of each side and of the per-repeat
ratios, with their min and max: `607 (590-620)`, ratio `0.90 (0.86-0.93)`. Where the ratios' min-max range holds
1.00 (at the two decimals shown), the repeats do not tell the sides apart, and the ratio cell says so:
`no measurable difference: 1.02 (0.97-1.06)`. A single repeat shows its value alone. A baseline that is no
alternative to sslscale (start-up's first run) is shown beside ours, without a ratio.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable, Generator

NO_DIFFERENCE = "no measurable difference"


def median(values) -> float:
    return float(statistics.median(values))


def stats(values) -> dict:
    """Median, min and max of one value per repeat, and the values."""
    values = [float(v) for v in values]
    return {"median": median(values), "min": min(values), "max": max(values), "repeats": values}


def line(section: str, what: str, ours: list[float], plain: list[float] | None, unit: str, note: str = "",
         lower_is_better: bool = False, paired: bool = True) -> dict:
    """One result line from one value per repeat on each side. paired: plain[i] was measured right after ours[i],
    so each repeat gives a ratio; otherwise (a baseline of another kind) the sides are only shown side by side."""
    ratio = None
    if plain is not None and paired:
        if len(ours) != len(plain):
            raise ValueError(f"{what}: {len(ours)} repeats of ours against {len(plain)} of plain")
        ratio = stats([p / o if lower_is_better else o / p for o, p in zip(ours, plain)])
        # at the two decimals shown, so that a range written as reaching 1.00 never reads as a difference; None
        # with one repeat: a single ratio cannot show whether the sides differ
        lo, hi = round(ratio["min"], 2), round(ratio["max"], 2)
        ratio["measurable"] = None if len(ours) == 1 else not lo <= 1.0 <= hi
    return {"section": section, "what": what, "unit": unit, "note": note, "ours": stats(ours),
            "plain": None if plain is None else stats(plain), "ratio": ratio}


def interleave(repeats: int, *sides: Callable):
    """Calls each side once per repeat, in the given order, repeat after repeat: one list of results per side."""
    out = [[] for _ in sides]
    for _ in range(repeats):
        for results, side in zip(out, sides):
            results.append(side())
    return out


def window(batches: Generator, count: Callable, samples: int) -> float:
    """samples/s of one window of at least `samples` samples from a fresh stream, after one warm-up batch (process
    pools, Ray tasks and the first shard are start-up, not ingest). Closes the stream after it, so that none of its
    work runs on into the other side's window."""
    try:
        count(next(batches))
        seen, t0 = 0, time.perf_counter()
        while seen < samples:
            seen += count(next(batches))
        return seen / (time.perf_counter() - t0)
    finally:
        batches.close()


def _format(value: float, unit: str) -> Callable[[float], str]:
    """How a median and its spread are written: one decimal for seconds and cores; else by size (3.12, 54.3, 607)."""
    digits = 1 if unit in ("s", "cores") else 2 if value < 10 else 1 if value < 100 else 0
    return lambda v: f"{v:,.{digits}f}"


def _spread(s: dict | None, fmt: Callable[[float], str]) -> str:
    if s is None:
        return ""
    return fmt(s["median"]) if len(s["repeats"]) == 1 else f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})"


def cells(x: dict) -> dict:
    """A line's table cells: ours, plain and the ratio as `median (min-max)`, and the repeats (ours / plain where
    their numbers differ)."""
    ratio = _spread(x["ratio"], lambda v: f"{v:.2f}")
    if x["ratio"] and x["ratio"]["measurable"] is False:
        ratio = f"{NO_DIFFERENCE}: {ratio}"
    n = len(x["ours"]["repeats"])
    m = len(x["plain"]["repeats"]) if x["plain"] else n
    return {"ours": _spread(x["ours"], _format(x["ours"]["median"], x["unit"])),
            "plain": _spread(x["plain"], _format(x["plain"]["median"], x["unit"])) if x["plain"] else "",
            "ratio": ratio, "repeats": str(n) if m == n else f"{n} / {m}"}


def write(path: str, lines: list[dict], **extra) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"lines": lines, **extra}, f, indent=1)


def show(lines: list[dict]) -> None:
    for x in lines:
        c = cells(x)
        plain = f" | plain {c['plain']}" if c["plain"] else ""
        ratio = f" | ratio {c['ratio']}" if c["ratio"] else ""
        print(f"[{x['section']}] {x['what']}: ours {c['ours']}{plain} {x['unit']}{ratio} ({c['repeats']} repeats)",
              flush=True)
