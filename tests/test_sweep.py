"""Real Ray Tune sweeps on the debug recipe: every trial is real Ray Train + DeepSpeed + Ray Data, then transfer,
logged as a child of the sweep's MLflow parent run. One trial in make test; the multi-trial ASHA run against a real
`mlflow server`, opened in headless Chromium, is `long` (make test-long)."""
import math
import os

import pytest

from sslscale import tracking

pytestmark = pytest.mark.slow


def _runs(uri, parent):
    """(the parent run, {trial id: child run}); fails on two children of one trial (a duplicate)."""
    children = tracking.child_runs(uri, parent)
    by_trial = {r.data.tags["sslscale.tune_trial_id"]: r for r in children}
    assert len(by_trial) == len(children), "a trial has two child runs"
    return tracking.get_run(uri, parent), by_trial


def _steps(uri, run_id, key):
    return [s for s, _ in tracking.history(uri, run_id, key)]


def test_one_trial_sweep_end_to_end(debug_cfg, ray_local):
    from sslscale import sweep

    result = sweep(debug_cfg, ["method.temperature=choice:0.3"], samples=1, scheduler="fifo", name="one",
                   recipe="debug", retrain_overrides=["train.steps=6", "data.cpus=1"])
    uri = tracking.resolve_uri("")
    parent, children = _runs(uri, result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "one"
    assert parent.data.params["sweep.space.method.temperature"] == "choice:0.3"
    assert parent.data.params["sweep.scheduler"] == "fifo" and parent.data.params["train.steps"] == "6"
    [(trial_id, child)] = children.items()
    assert child.info.status == "FINISHED" and child.data.params["method.temperature"] == "0.3"
    assert _steps(uri, child.info.run_id, "loss") == [1, 2, 3, 4, 5, 6]
    assert _steps(uri, child.info.run_id, "health/rankme") == [2, 4, 6]
    [best] = result.trials
    assert best["trial_id"] == trial_id and best["status"] == "finished" and best["run_id"] == child.info.run_id
    assert math.isclose(best["score"], child.data.metrics["transfer/digits/knn_top1"])
    assert parent.data.params["best.run_id"] == child.info.run_id
    assert parent.data.metrics["best/transfer/digits/knn_top1"] == best["score"]
    # what Tune saw: health steps and the checkpoint at 3 mid-run, then the trial's own final report with the score
    assert [s for s, _ in best["curve"]] == [2, 3, 4, 6]
    assert result.best_config.method.temperature == 0.3 and result.best_run_id == child.info.run_id
    assert result.command == "sslscale pretrain --recipe debug data.cpus=1 method.temperature=0.3"
    artifacts = {a.path for a in tracking.client(uri).list_artifacts(result.parent_run_id)}
    assert {"trials.md", "trials.csv", "score_vs_params.png", "parallel_coordinates.png", "health_curves.png",
            "best_embeddings.png"} <= artifacts
    assert os.path.isfile(os.path.join(result.folder, "sweep.json"))
