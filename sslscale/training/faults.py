"""Fault injection for reliability tests, driven by one environment variable; inert when it is unset.

`SSLSCALE_FAULTS="nan_loss@5-7"` poisons rank 0's input (so its loss and gradients) at training steps 5 to 7 (a comma-separated list of
`NAME@FIRST[-LAST]`). `slow_step@11-60` makes rank 0 sleep SLOW_STEP_S before each of those steps (the other ranks
wait for it in the step's all-reduce): a test that kills a run after a checkpoint gets a window in which training is
certainly still going, however fast the machine. The driver reads the variable when it launches training and hands the spec to the workers
in their loop config (train.fit). Tests use it to prove that a fault is survived end to end, through the real
components; nothing else reads it.
"""
from __future__ import annotations

import os

ENV = "SSLSCALE_FAULTS"
SLOW_STEP_S = 0.4


def _parse(text: str) -> dict[str, tuple[int, int]]:
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, span = item.partition("@")
        first, _, last = span.partition("-")
        faults[name] = (int(first), int(last or first))
    return faults


def spec() -> str:
    """This process's fault spec (the driver's, at launch)."""
    return os.environ.get(ENV, "")


def hit(name: str, step: int, rank: int, faults: str) -> bool:
    """Whether fault `name` of spec `faults` fires at `step` (on rank 0 only, so the others must follow)."""
    span = _parse(faults).get(name)
    return rank == 0 and span is not None and span[0] <= step <= span[1]
