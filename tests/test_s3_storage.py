"""train.storage, the corpus and MLflow's artifacts on a real S3-compatible server (SeaweedFS on 127.0.0.1): a run
writes its folder, checkpoints and encoder to the bucket and none on the local disk, and a --resume reads its
checkpoint back from s3://.
Several nodes on one machine share a disk, so only this test proves nothing depends on a driver-local path.
Long (make test-long)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import mlflow
import pyarrow.fs as pafs
import pytest

from s3_server import S3Server

SSLSCALE = os.path.join(os.path.dirname(sys.executable), "sslscale")


def _pretrain(env: dict, cwd, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([SSLSCALE, "pretrain", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


@pytest.mark.long
@pytest.mark.timeout(900)
def test_a_run_lives_in_s3_and_resumes_from_it(tmp_path, data_root, monkeypatch):
    """Corpus and run folder in s3://: no local run folder, the objects in the bucket, a resume from s3."""
    s3 = S3Server(tmp_path / "s3")
    try:
        s3.start()
        s3.make_bucket("sslscale")
        env = {**os.environ, **s3.env(), "SSLSCALE_DATA": data_root}
        env.pop("RAY_ADDRESS", None)
        for key, value in s3.env().items():  # this process reads the bucket below
            monkeypatch.setenv(key, value)
        # the prepared digits corpus, copied into the bucket: read there (plain s3:// + AWS_ENDPOINT_URL)
        pafs.copy_files(os.path.join(data_root, "digits"), "s3://sslscale/corpora/digits")
        storage = s3.uri("sslscale/runs")  # the ?endpoint_override=...&scheme=http form
        work = tmp_path / "work"
        work.mkdir()
        store = mlflow.MlflowClient(f"sqlite:///{work}/mlruns.db")
        store.create_experiment("sslscale", artifact_location="s3://sslscale/mlflow")  # MLflow's artifacts in S3 too
        common = ["--recipe", "debug", "data.corpus=s3://sslscale/corpora/digits", f"train.storage={storage}",
                  "train.checkpoint_every=3", "transfer.baseline=false"]
        first = _pretrain(env, work, *common, "train.steps=3")
        run_id = re.search(r"run id:\s+(\w+)", first.stdout).group(1)
        assert f"s3://sslscale/runs/{run_id}" in first.stdout

        second = _pretrain(env, work, "--resume", run_id, "train.steps=6")
        assert "resuming from the checkpoint at step 3" in second.stdout + second.stderr
        assert "checkpoint_0000006" in second.stdout

        keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket="sslscale", Prefix=f"runs/{run_id}/")
                .get("Contents", [])}
        for wanted in ("run.json", "encoder.safetensors", "attempt-0/checkpoint_0000003/state.json",
                       "attempt-1/checkpoint_0000006/state.json", "attempt-1/checkpoint_0000006/encoder.safetensors"):
            assert f"runs/{run_id}/{wanted}" in keys, sorted(keys)
        local = [os.path.join(root, d) for root, dirs, _ in os.walk(tmp_path) for d in dirs if d == run_id]
        assert not local and not (work / "runs").exists(), local
        artifacts = {o["Key"] for o in s3.client().list_objects_v2(Bucket="sslscale", Prefix="mlflow/")
                     .get("Contents", [])}
        assert any(k.endswith(f"{run_id}/artifacts/encoder/encoder.safetensors") for k in artifacts), artifacts

        run = store.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["sslscale.run_dir"].startswith("s3://sslscale/runs/")
        steps = [m.step for m in store.get_metric_history(run_id, "loss")]
        assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    finally:
        s3.stop()
