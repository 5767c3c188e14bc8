"""Per-trial overhead of a sweep: everything a trial costs except its training steps and its transfer scoring, for
sweeps of 1, 4 and 8 trivial trials (the debug recipe, 2 steps) on one Ray instance, one trial at a time. With
--scheduler fifo (the default) a trial starts in its predecessor's trial actor (tune._reuse); with asha (no trial
is stopped early here: 2 steps) each trial starts a new one.

    python benchmarks/sweep_overhead.py [--trials 1,4,8] [--scheduler fifo|asha] [--out docs/sweep_overhead.json]

Split into parts from the clocks the sweep already keeps (MLflow run start/end, each metric's timestamp):
  launch      previous trial's end (or the sweep's start) -> this trial's child run exists: Tune schedules the trial
              actor, imports, config and corpus checks, the MLflow run
  to step 1   child run exists -> step 1 done: Ray Train controller and worker group, imports, DeepSpeed init,
              dataset start, first batch (minus step 1 itself, taken as the median step)
  steps       the training steps (excluded from the overhead)
  wind-down   last step -> transfer scores logged, minus the transfer scoring itself (timed here on the same
              encoder): last checkpoint, trainer teardown, encoder export, held metrics
  close       scores logged -> the child run ends: artifacts (encoder, curves.png), end of run
and per sweep: Ray start (first sweep only), sweep set-up (checks, parent run) and finish (table, plots, map).
Not a test: numbers depend on the machine. Writes a JSON of every trial's parts beside the printed table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from pipelines import load_recipe
from sslscale.data import corpus
from sslscale.runtime import tracking


def _parts(uri: str, run, prev_end: float, transfer_s: float) -> dict:
    rid = run.info.run_id
    losses = tracking.client(uri).get_metric_history(rid, "loss")
    ts = sorted(m.timestamp / 1000 for m in losses)
    step = statistics.median(b - a for a, b in zip(ts, ts[1:])) if len(ts) > 1 else 0.0
    scored = min(m.timestamp for k in run.data.metrics if k.startswith("transfer/")
                 for m in tracking.client(uri).get_metric_history(rid, k)) / 1000
    start, end = run.info.start_time / 1000, run.info.end_time / 1000
    phases = {k: v for k, v in run.data.metrics.items() if k.startswith(("startup/", "winddown/"))}
    return {"launch": start - prev_end, "to step 1": ts[0] - step - start, "steps": ts[-1] - ts[0] + step,
            "wind-down": scored - ts[-1] - transfer_s, "close": end - scored, "phases": phases}


def _transfer_seconds(run, cfg) -> float:
    from sslscale.evaluation.transfer import evaluate
    from sslscale.training.export import load_encoder

    encoder = load_encoder(os.path.join(run.data.tags["sslscale.run_dir"], "encoder.safetensors"))
    t0 = time.perf_counter()
    evaluate(encoder, cfg.transfer)
    return time.perf_counter() - t0


def measure(n: int, tmp: str, cfg, scheduler: str) -> dict:
    from sslscale import sweep

    t0 = time.time()
    result = sweep(cfg.override([f"tracking.uri=sqlite:///{tmp}/sweeps.db"]),
                   ["method.simclr.temperature=uniform:0.1:0.3"], samples=n, scheduler=scheduler, name=f"overhead-{n}",
                   recipe="debug")
    t1 = time.time()
    uri = f"sqlite:///{tmp}/sweeps.db"
    runs = sorted(tracking.child_runs(uri, result.parent_run_id), key=lambda r: r.info.start_time)
    parent = tracking.get_run(uri, result.parent_run_id)
    transfer_s = _transfer_seconds(runs[0], cfg)
    trials, prev = [], parent.info.start_time / 1000
    for run in runs:
        trials.append(_parts(uri, run, prev, transfer_s))
        prev = run.info.end_time / 1000
    return {"trials": n, "wall_s": t1 - t0, "setup_s": parent.info.start_time / 1000 - t0,
            "finish_s": t1 - prev, "transfer_s": transfer_s, "per_trial": trials}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", default="1,4,8")
    p.add_argument("--scheduler", default="fifo", help="fifo (trials reuse their actor) or asha (they do not)")
    p.add_argument("--out", default="docs/sweep_overhead.json")
    args = p.parse_args()
    from sslscale.runtime.cluster import ensure_ray, shutdown

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("SSLSCALE_DATA", os.path.join(tmp, "data"))
        cfg = load_recipe("debug").override([f"train.storage={tmp}/runs", "train.steps=2",
                                             "train.checkpoint_every=2", "transfer.baseline=false"])
        corpus.resolve("digits")
        t0 = time.time()
        ensure_ray(log_to_driver=False)
        ray_s = time.time() - t0
        rows = [measure(int(n), tmp, cfg, args.scheduler) for n in args.trials.split(",")]
        shutdown()
    keys = ["launch", "to step 1", "wind-down", "close"]
    print(f"Ray start: {ray_s:.1f} s (once per driver)\n")
    print("| trials | wall s | set-up s | " + " | ".join(f"{k} s" for k in keys) + " | overhead s/trial | finish s |")
    print("|---|---|---|" + "---|" * len(keys) + "---|---|")
    for r in rows:
        med = {k: statistics.median(t[k] for t in r["per_trial"]) for k in keys}
        print(f"| {r['trials']} | {r['wall_s']:.0f} | {r['setup_s']:.1f} | "
              + " | ".join(f"{med[k]:.1f}" for k in keys) + f" | {sum(med.values()):.1f} | {r['finish_s']:.1f} |")
    with open(args.out, "w") as f:
        json.dump({"scheduler": args.scheduler, "ray_start_s": ray_s, "sweeps": rows}, f, indent=2)
    print(f"\nmedians over each sweep's trials; every trial's parts in {args.out}")
    _phase_table(rows)


def _phase_table(rows: list[dict]) -> None:
    """The trials' own start-up and wind-down phases (timeline.py, logged by each run), medians per sweep."""
    names = sorted({k for r in rows for t in r["per_trial"] for k in t["phases"]})
    print("\n| phase (s) | " + " | ".join(f"{r['trials']} trial(s)" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for name in names:
        cells = [statistics.median(t["phases"].get(name, float("nan")) for t in r["per_trial"]) for r in rows]
        print(f"| {name.removesuffix('_s')} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
