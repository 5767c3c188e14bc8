"""cluster/mlflow-server.sh: its argument checks, and a real server on a real PostgreSQL with served artifacts."""
from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from postgres import Postgres

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster", "mlflow-server.sh")


def _script(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=kw.pop("timeout", 30), **kw)


def test_refuses_any_host_and_bad_arguments():
    """--host 0.0.0.0 and a wrong argument each get one line on stderr and exit 2; --help prints the usage."""
    for args, named in [(["--host", "0.0.0.0"], "--allow-any-host"), (["--bogus"], "'--bogus'"),
                        (["--port", "http"], "--port 'http'"), (["--port"], "--port needs a value")]:
        out = _script(*args)
        assert out.returncode == 2 and out.stdout == "", (args, out)
        assert len(out.stderr.splitlines()) == 1 and named in out.stderr, (args, out.stderr)
    out = _script("--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: ") and "--artifacts-destination" in out.stdout


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.split("/")[2]))
    return pids


def _stop_group(pgid: int, limit: float = 20) -> None:
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.time() + limit
    while _group(pgid) and time.time() < deadline:
        time.sleep(0.2)
    if _group(pgid):
        os.killpg(pgid, signal.SIGKILL)


def _start_on_postgres(tmp_path, monkeypatch) -> tuple[Postgres, str, str]:
    """(PostgreSQL, the pid file, the URI) of `mlflow-server.sh --daemon` on a real PostgreSQL in tmp_path."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a dead server fails the test fast, not in 4 minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pid_file = tmp_path / "mlflow.pid"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_BIN", "MLFLOW_BACKEND_STORE_URI")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # the script finds this venv's mlflow
    pg = Postgres(tmp_path / "pg")
    pg.start()
    out = _script("--backend-store-uri", pg.uri, "--artifacts-destination", str(tmp_path / "artifacts"),
                  "--port", str(port), "--workers", "1", "--daemon", "--pid-file", str(pid_file), "--log-file",
                  str(tmp_path / "server.log"), env=env, timeout=120)
    if out.returncode:
        pg.stop()
        raise AssertionError(out.stderr)
    return pg, str(pid_file), out.stdout.strip()


def _stop_all(pg: Postgres, pid_file: str) -> None:
    if os.path.exists(pid_file):
        _stop_group(int(open(pid_file).read()))
    pg.stop()


@pytest.mark.long
@pytest.mark.timeout(300)
def test_daemon_on_postgres_serves_runs_and_artifacts(tmp_path, monkeypatch):
    """--daemon on a real PostgreSQL: a run, param, metric and artifact round-trip, and the run lies in the database."""
    import mlflow
    import psycopg2

    pg, pid_file, uri = _start_on_postgres(tmp_path, monkeypatch)
    try:
        assert uri.startswith("http://127.0.0.1:")
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.create_run(client.create_experiment("postgres-check"))
        run_id = run.info.run_id
        client.log_param(run_id, "method", "simclr")
        client.log_metric(run_id, "loss", 1.25, step=3)
        (tmp_path / "note.txt").write_text("served")
        client.log_artifact(run_id, str(tmp_path / "note.txt"))
        client.set_terminated(run_id)

        got = client.get_run(run_id)
        assert got.data.params == {"method": "simclr"} and got.data.metrics == {"loss": 1.25}
        assert got.info.artifact_uri.startswith("mlflow-artifacts:"), got.info.artifact_uri
        assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
        fetched = client.download_artifacts(run_id, "note.txt", str(tmp_path))
        assert open(fetched).read() == "served"
        found = glob.glob(f"{tmp_path}/artifacts/**/note.txt", recursive=True)
        assert [open(p).read() for p in found] == ["served"]

        with psycopg2.connect(pg.uri) as conn, conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
            assert cur.fetchall() == [("FINISHED",)]
            cur.execute("SELECT key, value, step FROM metrics WHERE run_uuid = %s", (run_id,))
            assert cur.fetchall() == [("loss", 1.25, 3)]
        conn.close()
    finally:
        _stop_all(pg, pid_file)


@pytest.mark.long
@pytest.mark.timeout(900)
def test_pretraining_and_a_two_wide_sweep_on_postgres(tmp_path, monkeypatch, debug_cfg, ray_local):
    """A pretraining, then a sweep running two trials side by side, log to one server on a real PostgreSQL."""
    import mlflow

    from sslscale import pretrain, sweep

    pg, pid_file, uri = _start_on_postgres(tmp_path, monkeypatch)
    try:
        debug_cfg.tracking.uri = uri
        result = pretrain(debug_cfg)
        run = mlflow.MlflowClient(uri).get_run(result.run_id)
        assert run.info.status == "FINISHED" and 0 < run.data.metrics["transfer/digits/knn_top1"] <= 1
        assert "encoder" in {a.path for a in mlflow.MlflowClient(uri).list_artifacts(result.run_id)}

        # one worker and half a CPU each for training and data: two trials fit this 2-core machine at once
        small = debug_cfg.override(["train.workers=1", "train.cpus_per_worker=0.5", "data.cpus=0.5"])
        swept = sweep(small, ["method.simclr.temperature=grid:0.1,0.5"], samples=1, scheduler="fifo", search="random",
                      max_concurrent=2, name="pg")
        children = [r for r in mlflow.MlflowClient(uri).search_runs(
            [run.info.experiment_id], f"tags.mlflow.parentRunId = '{swept.parent_run_id}'")]
        assert sorted(r.data.params["method.simclr.temperature"] for r in children) == ["0.1", "0.5"]
        assert all(r.info.status == "FINISHED" for r in children)
        first, second = sorted(children, key=lambda r: r.info.start_time)
        assert second.info.start_time < first.info.end_time, "the two trials did not run side by side"
    finally:
        _stop_all(pg, pid_file)
