"""Where a run's fixed time goes: wall-clock marks from the driver and from rank 0, turned into phases.

Start-up runs from `pretrain()` to the end of the first step, wind-down from the end of the last step to the
result. The driver marks its own points (`Marks.mark`); rank 0 marks its points in the train loop and carries them
in each checkpoint's state.json (`timeline`), which the driver reads back from the final checkpoint. Marks are
`time.time()` stamps: one clock on one machine, NTP's skew between nodes on a cluster. `phases` is what a run logs
to MLflow (`startup/<phase>_s`, `winddown/<phase>_s`) and what benchmarks/train_throughput.py reports.
"""
from __future__ import annotations

import time

IMPORTED_AT = time.time()  # when this process began importing sslscale (the package imports this module first)

# (phase, from mark, to mark), in order; a phase whose marks are missing (e.g. a resumed run) is left out
STARTUP = (("setup", "start", "ray_start"),  # config and corpus checks, the MLflow run
           ("ray_init", "ray_start", "ray_ready"),
           ("stream_plan", "ray_ready", "fit"),  # the latest checkpoint, the Ray Data plan
           ("worker_group", "fit", "imported"),  # Ray Train's controller, worker actors, torch.distributed
           ("imports", "imported", "loop"),  # sslscale, DeepSpeed, ... in rank 0
           # the method, DeepSpeed's initialize (its ops), a restore; Ray Data's start and first views run beside it
           ("engine_init", "loop", "engine"),
           ("first_batch", "engine", "first_batch"),  # what the first views took beyond engine_init
           ("first_step", "first_batch", "first_step"))
WINDDOWN = (("checkpoint_and_exit", "last_step", "fit_done"),  # the final checkpoint, Ray Train's teardown
            ("finish", "fit_done", "done"))  # encoder export, transfer scores, artifacts, end of the MLflow run


class Marks(dict):
    """Named time.time() stamps; the first mark of a name wins (a retried attempt keeps the first one)."""

    def mark(self, name: str) -> None:
        self.setdefault(name, time.time())


def phases(marks: dict) -> dict[str, float]:
    """{"startup/<phase>_s": seconds, ..., "startup/total_s", "winddown/<phase>_s", ..., "winddown/total_s"}."""
    out = {}
    for prefix, table in (("startup", STARTUP), ("winddown", WINDDOWN)):
        parts = {f"{prefix}/{name}_s": marks[b] - marks[a] for name, a, b in table if a in marks and b in marks}
        if parts:
            out.update(parts, **{f"{prefix}/total_s": marks[table[-1][2]] - marks[table[0][1]]}
                       if table[0][1] in marks and table[-1][2] in marks else {})
    return out
