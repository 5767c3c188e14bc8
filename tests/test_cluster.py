"""A real two-node Ray cluster on this machine (`ray start` with token auth, a second node with its own temp dir
and a custom resource) and a real `mlflow server`: `sslscale submit` runs a short pretraining there as a Ray job,
and its run, with transfer scores, is in the server. Long (make test-long)."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import mlflow
import pytest

from mlflow_server import MlflowServer
from ray_nodes import RayNodes

REPO = pathlib.Path(__file__).parents[1]
SSLSCALE = os.path.join(os.path.dirname(sys.executable), "sslscale")


def _submit(env: dict, *args: str, limit: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([SSLSCALE, "submit", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=limit)


@pytest.mark.long
def test_submit_pretraining_to_a_two_node_cluster(tmp_path, data_root):
    """A job on a CPU-0 head trains on the second node and logs its transfer scores to the shared server."""
    server = MlflowServer(tmp_path / "mlflow")
    (tmp_path / "mlflow").mkdir()
    storage = tmp_path / "storage"
    # what ray_cluster.yaml gives every node: the shared MLflow server and storage
    nodes = RayNodes(env={"MLFLOW_TRACKING_URI": server.uri, "SSLSCALE_STORAGE": str(storage),
                                            "SSLSCALE_DATA": data_root})
    try:
        server.start()
        nodes.start_head(num_cpus=0, resources='{"sslscale_driver": 2}')  # drivers only, as on a cloud cluster
        nodes.add_node("worker", num_cpus=3, resources='{"cpu_pool": 3}')
        env = {**os.environ, **nodes.client_env()}
        env.pop("MLFLOW_TRACKING_URI", None)

        wrong = _submit({**env, "RAY_AUTH_TOKEN": "0" * 32}, "--list", limit=60)
        assert wrong.returncode == 2 and "refused the auth token" in wrong.stderr, wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr

        done = _submit(env, "--", "pretrain", "--recipe", "debug")
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        job_id = re.search(r"submitted job (\S+)", done.stdout).group(1)
        run_id = re.search(r"run id:\s+(\w+)", done.stdout).group(1)
        assert "transfer scores" in done.stdout

        listed = _submit(env, "--list", limit=60)
        assert re.search(rf"{job_id}\s+SUCCEEDED", listed.stdout), listed.stdout
        assert f"run id:      {run_id}" in _submit(env, "--logs", job_id, limit=60).stdout

        run = mlflow.MlflowClient(server.uri).get_run(run_id)
        assert run.info.status == "FINISHED"
        assert 0 < run.data.metrics["transfer/digits/knn_top1"] <= 1
        assert run.data.tags["sslscale.run_dir"].startswith(str(storage))  # the nodes' SSLSCALE_STORAGE
        assert os.path.isfile(os.path.join(run.data.tags["sslscale.run_dir"], "encoder.safetensors"))

        started = _submit(env, "--no-wait", "--", "pretrain", "--recipe", "debug", "train.steps=400", limit=120)
        assert started.returncode == 0, started.stderr
        second = re.search(r"submitted job (\S+)", started.stdout).group(1)
        stopped = _submit(env, "--stop", second, limit=120)
        assert stopped.returncode == 0 and f"job {second}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    finally:
        nodes.stop()
        server.stop()
    assert not nodes.pids(), "a Ray process outlived the test"
