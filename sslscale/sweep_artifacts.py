"""A finished sweep's artifacts on its MLflow parent run: the ranked table (markdown and CSV), the best trial's id,
values and scores, and the plots (score against each searched key, parallel coordinates, every trial's health curve
with the scheduler's stops marked, and a 2-D map of the best encoder's embeddings of the target's test split).
Files are written into the sweep's folder first, so they survive a store that is away.
"""
from __future__ import annotations

import os

from sslscale import checkpoint, plots, sweep_report, tracking, transfer
from sslscale.export import load_encoder


def _files(state: dict, ranked: list[dict], keys: list[str], table: str, best: dict | None, target: str) -> list[str]:
    folder, metric, signal = state["folder"], state["metric"], state["signal"]
    log_keys = [item.partition("=")[0] for item in state["space"] if "=loguniform:" in item]
    md, csv = os.path.join(folder, "trials.md"), os.path.join(folder, "trials.csv")
    with open(md, "w") as f:
        f.write(table)
    with open(csv, "w") as f:
        f.write(sweep_report.to_csv(ranked, keys, metric, signal))
    files = [md, csv,
             plots.score_vs_params(ranked, keys, metric, os.path.join(folder, "score_vs_params.png"), log_keys),
             plots.parallel_coordinates(ranked, keys, metric, os.path.join(folder, "parallel_coordinates.png"),
                                        log_keys),
             plots.health_overlay(ranked, signal, os.path.join(folder, "health_curves.png"))]
    if best and state["config"]["transfer"]["enabled"]:
        run_dir = tracking.get_run(state["config"]["tracking"]["uri"], best["run_id"]).data.tags["sslscale.run_dir"]
        encoder = load_encoder(os.path.join(run_dir, checkpoint.ENCODER))
        files.append(transfer.embedding_map(encoder, target, os.path.join(folder, "best_embeddings.png")))
    return files


def log(state: dict, cfg, ranked: list[dict], keys: list[str], table: str, best: dict | None) -> None:
    """Write the files into the sweep folder and log them, and the best trial, to the parent run (best effort)."""
    uri, parent = cfg.tracking.uri, state["parent"]
    files = tracking.best_effort(_files, state, ranked, keys, table, best, cfg.transfer.target) or []
    for path in files:
        tracking.best_effort(tracking.log_artifact, uri, parent, path)
    if best:
        params = {"best.trial_id": best["trial_id"], "best.run_id": best["run_id"],
                  **{f"best.{k}": v for k, v in best["params"].items()}}
        tracking.best_effort(tracking.log_params, uri, parent, params)
        tracking.best_effort(tracking.log_metrics, uri, parent, {f"best/{k}": v for k, v in best["scores"].items()})
    tracking.best_effort(tracking.set_tags, uri, parent, {"sslscale.trials": len(ranked),
                                                          "sslscale.finished": sum(t["status"] == "finished"
                                                                                   for t in ranked)})
