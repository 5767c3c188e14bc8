"""A sweep in MLflow and in its folder (no Ray here): the parent run, each trial's child run closed as it ended,
and the finished sweep's artifacts: the ranked table (markdown and CSV), the best trial's id, values and scores,
and the plots (score against each searched key, parallel coordinates, every trial's health curve with the
scheduler's stops marked, a 2-D map of the best encoder's embeddings of the target's test split).
Files are made locally and copied into the sweep's folder (a path or s3://) first, so they survive a store that is
away; each MLflow call is best
effort, so one that fails costs that artifact, not the sweep.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile

from sslscale import plots, storage
from sslscale.config import Config
from sslscale.evaluation import transfer
from sslscale.runtime import tracking
from sslscale.sweeps import report, space as spaces
from sslscale.training import checkpoint
from sslscale.training.export import load_encoder
from sslscale.training.health import HEALTH_KEYS

logger = logging.getLogger(__name__)
STATE = "sweep.json"  # our part of the sweep folder: what resume needs (Tune's own state sits beside it)


def write_state(state: dict) -> None:
    storage.write_json(storage.join(state["folder"], STATE), state, indent=2)


def open_parent(cfg: Config, state: dict) -> str:
    """The sweep's parent run: the base config, and the space and options as `sweep.*` params."""
    parent_cfg = Config.from_dict(cfg.to_dict())
    parent_cfg.tracking.run_name = f"sweep {state['name']}"
    run_id = tracking.start_run(cfg.tracking.uri, parent_cfg, {"sslscale.sweep": state["name"],
                                                               "sslscale.sweep_folder": state["folder"]})
    params = {f"sweep.space.{d.key}": d.spec for d in spaces.parse(state["space"]).values()}
    params.update({f"sweep.{k}": state[k] for k in ("samples", "scheduler", "search", "metric", "mode", "signal",
                                                   "grace_period", "reduction_factor", "seed")})
    tracking.log_params(cfg.tracking.uri, run_id, params)
    return run_id


def children_by_trial(uri: str, parent: str) -> dict:
    """{Tune trial id: its child run} under the sweep's parent run (the newest, should a trial have two)."""
    return {r.data.tags.get("sslscale.tune_trial_id"): r for r in tracking.child_runs(uri, parent)}


def close_child(uri: str, record: dict, run) -> None:
    """A trial the scheduler stopped ends KILLED with the health it last reported (its training was cut between
    checkpoints, and `pretrain` saw that as a failed run); a trial that died without closing its run ends FAILED."""
    if run is None or record["status"] == "finished":
        return
    if record["status"] == "stopped" and run.info.status in ("RUNNING", "FAILED"):
        logged = max([s for s, _ in tracking.history(uri, record["run_id"], HEALTH_KEYS[0])], default=0)
        for step, values in sorted(record["health"].items()):
            if step > logged:
                tracking.log_metrics(uri, record["run_id"], values, step=step)
        tracking.set_tags(uri, record["run_id"], {"sslscale.stopped_by": "scheduler"})
        tracking.end_run(uri, record["run_id"], "KILLED")
    elif run.info.status == "RUNNING":
        tracking.end_run(uri, record["run_id"], "FAILED")


def _write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def _safe(fn, *args):
    """A file of the sweep's: written, or one warning naming it (a plot that fails costs that plot only)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        logger.warning(f"sweep artifact {getattr(fn, '__name__', fn)} not written ({type(e).__name__}: {e})")
        return None


def _best_map(state: dict, best: dict, target: str, out: str) -> str:
    run_dir = tracking.get_run(state["config"]["tracking"]["uri"], best["run_id"]).data.tags["sslscale.run_dir"]
    return transfer.embedding_map(load_encoder(storage.join(run_dir, checkpoint.ENCODER)), target, out)


def _files(state: dict, ranked: list[dict], table: str, best: dict | None, target: str, local: str) -> list[str]:
    """The table and plots, made in the local folder `local` and copied into the sweep folder (any storage)."""
    folder, metric, signal = state["folder"], state["metric"], state["signal"]
    space = spaces.parse(state["space"])
    keys, log_keys = list(space), [d.key for d in space.values() if d.log]
    out = lambda name: os.path.join(local, name)  # noqa: E731
    files = [_safe(_write, out("trials.md"), table),
             _safe(_write, out("trials.csv"), report.to_csv(ranked, keys, metric, signal)),
             _safe(plots.score_vs_params, ranked, keys, metric, out("score_vs_params.png"), log_keys),
             _safe(plots.parallel_coordinates, ranked, keys, metric, out("parallel_coordinates.png"), log_keys),
             _safe(plots.health_overlay, ranked, signal, out("health_curves.png"))]
    if best:
        files.append(_safe(_best_map, state, best, target, out("best_embeddings.png")))
    made = [f for f in files if f]
    for path in made:
        _safe(storage.copy_file, path, storage.join(folder, os.path.basename(path)))
    return made


def log(state: dict, cfg: Config, ranked: list[dict], table: str, best: dict | None) -> None:
    """Write the files into the sweep folder and log them, and the best trial, to the parent run (best effort)."""
    uri, parent = cfg.tracking.uri, state["parent"]
    with tempfile.TemporaryDirectory(prefix="sslscale-sweep-") as local:
        for path in _files(state, ranked, table, best, cfg.transfer.target, local):
            tracking.best_effort(tracking.log_artifact, uri, parent, path)
    if best:
        params = {"best.trial_id": best["trial_id"], "best.run_id": best["run_id"],
                  **{f"best.{k}": v for k, v in best["params"].items()}}
        tracking.best_effort(tracking.log_params, uri, parent, params)
        scores = {f"best/{k}": v for k, v in best["scores"].items() if math.isfinite(v)}
        tracking.best_effort(tracking.log_metrics, uri, parent, scores)
    finished = sum(t["status"] == "finished" for t in ranked)
    tracking.best_effort(tracking.set_tags, uri, parent, {"sslscale.trials": len(ranked), "sslscale.finished": finished})
    tracking.best_effort(tracking.end_run, uri, parent, "FINISHED" if best else "FAILED")
