"""Kill the `sslscale pretrain` driver after a checkpoint and resume it with `--resume` in a new process: the same
MLflow run, every step logged once, no sample repeated within an epoch. Long (two CLI runs, each starting its own
Ray): `make test-long`, which CI runs after `make test`."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from sslscale.runtime import tracking
from sslscale.training import checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.long]
SSLSCALE = os.path.join(os.path.dirname(sys.executable), "sslscale")


def _wait_for_checkpoint(runs: str, proc, limit: float) -> str:
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        for run in os.listdir(runs) if os.path.isdir(runs) else []:
            if checkpoint.latest(os.path.join(runs, run)):
                return os.path.join(runs, run)
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint within {limit}s (exit code {proc.poll()})")


def _wait_for_ray_to_go(limit: float) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        cmds = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
        if not any(word in cmd for cmd in cmds for word in ("raylet", "gcs_server", "ray::")):
            return
        time.sleep(0.5)
    raise AssertionError(f"Ray processes still alive {limit}s after the driver was killed")


def test_killed_driver_resumes_in_the_same_run(data_root, tmp_path, record):
    env = {**os.environ, "SSLSCALE_DATA": data_root, "RAY_DEDUP_LOGS": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    steps = 300  # far from the first checkpoints: the killed driver's workers run on for a few seconds
    args = ["pretrain", "--recipe", "debug", f"train.steps={steps}", "train.checkpoint_every=10",
            "transfer.enabled=false"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([SSLSCALE, *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            run_dir = _wait_for_checkpoint(str(tmp_path / "runs"), proc, limit=240)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _wait_for_ray_to_go(limit=90)  # workers of the killed driver may still finish a checkpoint or two
    killed_at = checkpoint.read_state(checkpoint.latest(run_dir))["step"]
    assert killed_at < steps
    run_id = json.load(open(os.path.join(run_dir, "run.json")))["run_id"]

    resume_started = time.time()
    resumed = subprocess.run([SSLSCALE, "pretrain", "--resume", run_id], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from the checkpoint at step {killed_at}" in resumed.stdout + resumed.stderr

    uri = tracking.resolve_uri(f"sqlite:///{tmp_path}/mlruns.db")
    steps_logged = [s for s, _ in tracking.history(uri, run_id, "loss")]
    assert steps_logged == list(range(1, steps + 1))  # every step once: none lost, none twice
    runs = tracking.client(uri).search_runs([tracking.get_run(uri, run_id).info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"

    final = checkpoint.latest(run_dir)
    assert checkpoint.read_state(final)["step"] == steps
    repeated = checkpoint.read_state(final)["repeated_samples"]
    assert repeated == 0  # no sample consumed twice within an epoch, across the kill and the resume
    next_step = next(m for m in tracking.client(uri).get_metric_history(run_id, "loss") if m.step == killed_at + 1)
    record(fault="driver killed", injected="SIGKILL of the `sslscale pretrain` process group after a checkpoint",
           outcome=f"`sslscale pretrain --resume RUN_ID` went on from step {killed_at} in the same MLflow run; "
                   f"steps 1-{steps} logged once each",
           lost=0, repeated=repeated,
           recover_s=f"{next_step.timestamp / 1000 - resume_started:.1f} (from --resume, incl. Ray start)")
