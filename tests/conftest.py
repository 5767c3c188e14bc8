"""Shared fixtures: a prepared digits corpus (real shards), an sqlite MLflow store in tmp, the debug config."""
from __future__ import annotations

import json
import os

import pytest

from sslscale.data import corpus


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> str:
    """$SSLSCALE_DATA for the session, with the digits corpus prepared once."""
    root = tmp_path_factory.mktemp("data")
    corpus.prepare("digits", root / "digits", progress=False)
    return str(root)


@pytest.fixture
def debug_cfg(data_root, tmp_path, monkeypatch):
    """The debug recipe writing into tmp_path (runs/, mlruns.db), reading the session's digits corpus."""
    from pipelines import load_recipe

    monkeypatch.setenv("SSLSCALE_DATA", data_root)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return load_recipe("debug")


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance shared by one test module, shut down after it (a second instance confuses `ray start`
    clients, and the tests that start Ray in a subprocess need none left running)."""
    from sslscale.runtime.cluster import ensure_ray, shutdown

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ensure_ray()
    yield
    shutdown()


@pytest.fixture
def record(request):
    """record(fault=..., injected=..., outcome=..., lost=..., repeated=..., recover_s=...) appends a row to
    $SSLSCALE_RELIABILITY_REPORT (JSON lines) when it is set; `make reliability` renders docs/reliability.md's
    table from those rows, so the table is what the tests measured."""
    def _record(**row):
        path = os.environ.get("SSLSCALE_RELIABILITY_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"test": request.node.name, **row}) + "\n")
    return _record


def pytest_sessionfinish(session, exitstatus):
    session.config.sslscale_exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process with pytest's exit status once it has reported everything, without Python's own
    finalization: on 2026-12-07 a fresh-clone `make test` passed all 540 tests and then died of a segmentation fault
    at interpreter exit (after faulthandler was off, so inside a native library's teardown: Ray, gloo, DeepSpeed,
    libsndfile or soxr), which failed make; the next run did not. What crashed is not found yet (see issue 28's
    note); SSLSCALE_TEST_FINALIZE=1 keeps the normal exit, to look for it."""
    status = getattr(config, "sslscale_exit_status", None)
    if status is not None and os.environ.get("SSLSCALE_TEST_FINALIZE") != "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
