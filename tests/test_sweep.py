"""Real Ray Tune sweeps on the debug recipe: every trial is real Ray Train + DeepSpeed + Ray Data, then transfer,
logged as a child of the sweep's MLflow parent run. One trial in make test; the multi-trial ASHA run against a real
`mlflow server`, opened in headless Chromium, is `long` (make test-long)."""
import math
import os

import pytest

from sslscale.runtime import tracking

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

    result = sweep(debug_cfg, ["method.simclr.temperature=choice:0.3"], samples=1, scheduler="fifo", search="optuna",
                   name="one", recipe="debug", retrain_overrides=["train.steps=6", "data.cpus=1"],
                   register="digits-encoder")
    uri = tracking.resolve_uri("")
    parent, children = _runs(uri, result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep one"
    assert parent.data.params["sweep.space.method.simclr.temperature"] == "choice:0.3"
    assert parent.data.params["sweep.scheduler"] == "fifo" and parent.data.params["sweep.search"] == "optuna"
    assert parent.data.params["train.steps"] == "6"
    [(trial_id, child)] = children.items()
    assert child.info.status == "FINISHED" and child.data.params["method.simclr.temperature"] == "0.3"
    assert child.info.run_name == f"debug: simclr on digits, trial {trial_id}"  # what it is, not a random name
    assert _steps(uri, child.info.run_id, "loss") == [1, 2, 3, 4, 5, 6]
    assert _steps(uri, child.info.run_id, "health/rankme") == [2, 4, 6]
    [best] = result.trials
    assert best["trial_id"] == trial_id and best["status"] == "finished" and best["run_id"] == child.info.run_id
    assert math.isclose(best["score"], child.data.metrics["transfer/digits/knn_top1"])
    assert parent.data.params["best.run_id"] == child.info.run_id
    assert parent.data.metrics["best/transfer/digits/knn_top1"] == best["score"]
    # what Tune saw on health steps (a checkpoint's report at step 3 carries step 2's values), the last in the
    # trial's own final report with the score
    assert [s for s, _ in best["curve"]] == [2, 4, 6]
    assert result.best_config.method.section("simclr").temperature == 0.3 and result.best_run_id == child.info.run_id
    assert result.command == "sslscale pretrain --recipe debug data.cpus=1 method.simclr.temperature=0.3"
    artifacts = {a.path for a in tracking.client(uri).list_artifacts(result.parent_run_id)}
    assert {"trials.md", "trials.csv", "score_vs_params.png", "parallel_coordinates.png", "health_curves.png",
            "best_embeddings.png"} <= artifacts
    assert os.path.isfile(os.path.join(result.folder, "sweep.json"))
    # --register: the winner's logged encoder is a registered model; a finished sweep registers again on request
    registry = tracking.client(uri)
    [version] = registry.search_model_versions("name = 'digits-encoder'")
    assert int(version.version) == 1 and version.run_id == child.info.run_id
    [logged] = tracking.logged_models(uri, child.info.run_id)
    assert version.source == f"models:/{logged.model_id}"
    from sslscale.sweeps.tune import resume

    resume("one", register="digits-encoder")
    assert sorted(int(v.version) for v in registry.search_model_versions("name = 'digits-encoder'")) == [1, 2]


@pytest.mark.long
@pytest.mark.timeout(900)
def test_asha_stops_the_bad_second_trial_and_the_ui_lists_the_sweep(debug_cfg, ray_local, tmp_path):
    """Three trials, one at a time, against a real `mlflow server`: the second has a 2-wide encoder output (its
    effective rank cannot pass 2), so ASHA stops it at the first rung; the third still runs (nothing the stopped
    trial held is leaked). Then a fresh headless Chromium opens the experiment page `sslscale ui` prints."""
    import browser
    from mlflow_server import MlflowServer
    from sslscale import sweep

    assert browser.available(), "no headless Chromium: `make browser` installs chromium and chromium-driver"
    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        cfg = debug_cfg.override([f"tracking.uri={server.uri}"])
        result = sweep(cfg, ["model.widths=grid:8,16|8,2|16,16"], samples=1, name="asha", grace_period=2,
                       register="asha-winner")
        parent, children = _runs(server.uri, result.parent_run_id)
        assert parent.info.status == "FINISHED" and len(children) == 3
        by_widths = {t["params"]["model.widths"]: t for t in result.trials}
        bad = by_widths["8,2"]
        assert bad["status"] == "stopped" and bad["error"] == "" and bad["last_step"] < cfg.train.steps
        assert result.trials[-1] is bad  # ranked after the finished ones
        child = children[bad["trial_id"]]
        bad_name = child.info.run_name
        assert child.info.status == "KILLED" and child.data.tags["sslscale.stopped_by"] == "scheduler"
        assert _steps(server.uri, child.info.run_id, "health/rankme")[-1] == bad["last_step"]
        ordered = sorted(children.values(), key=lambda r: r.info.start_time)
        # one at a time: a trial's last step before the next one starts. Judged by its health metric, which every
        # trial logs: a trial the scheduler stops before its first checkpoint has no `lr` in the store (its held
        # step metrics die with it), and whether the stop comes first depends on the machine's speed
        for a, b in zip(ordered, ordered[1:]):
            last = max(m.timestamp for m in tracking.client(server.uri).get_metric_history(a.info.run_id,
                                                                                           "health/rankme"))
            assert last <= b.info.start_time, "trials overlapped"
        for widths in ("8,16", "16,16"):
            good = children[by_widths[widths]["trial_id"]]
            assert good.info.status == "FINISHED" and by_widths[widths]["status"] == "finished"
            assert _steps(server.uri, good.info.run_id, "loss") == [1, 2, 3, 4, 5, 6]

        url = tracking.ui_url(server.uri, parent.info.experiment_id)
        names = [r.info.run_name for r in children.values()]
        ml_workspace = ["Run Name", "Model registry"]  # the runs table; the registry is in the ML sidebar only
        collapsed = browser.open_page(url, ["asha", *ml_workspace])
        assert not any(n in collapsed for n in names), "the trials should be rows nested under the sweep"
        shot = tmp_path / "ui-runs-table.png"
        text = browser.open_page(url, ["asha", *names, *ml_workspace], screenshot=str(shot), expand_nested=True)
        assert "Evaluation runs" not in text and "Judges" not in text, "the GenAI workspace opened"
        assert shot.stat().st_size > 10_000
        # the finished trials' encoders under the experiment's Models, and the winner's page names its registration
        finished = [children[by_widths[w]["trial_id"]].info.run_name for w in ("8,16", "16,16")]
        models = tmp_path / "ui-models.png"
        text = browser.open_page(tracking.ui_url(server.uri, parent.info.experiment_id, models=True),
                                 ["Model name", "encoder", "Ready", *finished], screenshot=str(models))
        assert bad_name not in text, "a stopped trial exported no encoder"
        browser.open_page(tracking.ui_url(server.uri, parent.info.experiment_id, result.best_run_id),
                          ["Registered models", "asha-winner", "v1"], screenshot=str(tmp_path / "ui-winner.png"))
    finally:
        server.stop()
