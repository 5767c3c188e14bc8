"""MLflow against a real sqlite store: nested runs, flat params, each step once, a store that is away."""

import os
import subprocess
import sys
import time

import pytest

from sslscale.config import Config
from sslscale.runtime import tracking


def test_resolve_uri_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri() == f"sqlite:///{tmp_path}/mlruns.db"
    assert tracking.resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert tracking.resolve_uri() == f"sqlite:///{tmp_path}/x.db"


OPEN_AT_ONCE = """
import os, sys, time
from sslscale.runtime import tracking
open(sys.argv[2] + f".{os.getpid()}", "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
tracking.client(sys.argv[1]).search_experiments()
"""


def test_processes_opening_one_new_sqlite_store_at_once_all_succeed(tmp_path):
    """Opening a new store creates its tables; without the lock one of two processes migrating at once fails."""
    uri, go = f"sqlite:///{tmp_path}/new.db", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, uri, str(go)], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    # each has imported sslscale and waits for the same moment
    while len(list(tmp_path.glob("go.*"))) < 3 and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-500:] for e in errors]
    assert os.path.getsize(tmp_path / "new.db") > 0


def test_runs_nest_with_flat_params_and_steps_log_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    parent = tracking.start_run(uri, Config())
    cfg = Config().override([f"tracking.parent_run_id={parent}", "train.steps=9"])
    run_id = tracking.start_run(uri, cfg)
    run = tracking.get_run(uri, run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["train.steps"] == "9" and run.data.params["model.widths"] == "(32, 64, 128)"
    assert "sslscale.version.torch" in run.data.tags

    first = tracking.MetricBuffer(uri, run_id)
    for step in range(1, 7):
        first.add(step, {"loss": 1.0 / step, "lr": 0.1})
    first.flush(4)  # steps 5-6 are not covered by a checkpoint: they die with the attempt
    second = tracking.MetricBuffer(uri, run_id)  # the restarted attempt re-runs steps 3..6
    for step in range(3, 7):
        second.add(step, {"loss": 2.0, "lr": 0.1})
    second.flush(6)
    assert [s for s, _ in tracking.history(uri, run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    # a checkpoint landed at step 8 but its metrics were never sent: they travel in the checkpoint
    carried = [(7, {"loss": 0.7, "lr": 0.1}, 0), (8, {"loss": 0.8, "lr": 0.1}, 0), (5, {"loss": 9.0, "lr": 0.1}, 0)]
    third = tracking.MetricBuffer(uri, run_id)
    third.restore(carried)
    third.flush(8)
    assert tracking.history(uri, run_id, "loss")[4:] == [(5, 2.0), (6, 2.0), (7, 0.7), (8, 0.8)]


def test_store_away_warns_once_and_keeps_metrics(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    buf = tracking.MetricBuffer("http://127.0.0.1:9", "run")  # nothing listens on port 9
    buf.add(1, {"loss": 1.0})
    assert buf.flush(1) is False
    buf.retry_at = 0  # try again at once instead of RETRY_S later: still away, and no second warning
    assert buf.flush(1) is False
    assert len([r for r in caplog.records if "not answering" in r.getMessage()]) == 1
    assert len(buf.pending) == 1


def test_unreachable_store_fails_start_in_one_line(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from sslscale.errors import SslscaleError

    with pytest.raises(SslscaleError, match="cannot create an MLflow run at http://127.0.0.1:9"):
        tracking.start_run("http://127.0.0.1:9", Config())
