"""A sweep driver killed mid-trial, then `sslscale sweep --resume NAME`: the same Tune experiment and parent run;
the finished trial is not rerun, the interrupted one continues its own child run from its last checkpoint, and no
step is logged twice. Real processes (the CLI in its own session, its local Ray killed with it). Long."""
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from sslscale.runtime import tracking
from sslscale.training import faults

pytestmark = pytest.mark.long
SSLSCALE = os.path.join(os.path.dirname(sys.executable), "sslscale")
STEPS = 30


def _children(uri):
    runs = tracking.client(uri).search_runs(["1"], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, {r.data.tags["sslscale.tune_trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}


def _wait_for_checkpointed_second_trial(uri, proc, log, limit=400):
    """Until the second trial's child run has metrics up to a checkpoint (they are sent when one lands). The store
    is opened only once the driver has printed its parent run: opening a sqlite store that does not exist yet runs
    MLflow's schema migrations, and two processes migrating one file at once can fail the driver's."""
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if "parent run" in open(log).read():
            _, children = _children(uri)
            second = [r for t, r in children.items() if t.endswith("_00001")]
            if second and len(tracking.history(uri, second[0].info.run_id, "loss")) >= 10:
                return second[0].info.run_id
        time.sleep(2)
    raise AssertionError(f"the second trial never checkpointed (driver exit code {proc.poll()}); its log ends:\n"
                         + open(log).read()[-3000:])


@pytest.mark.timeout(1200)
def test_killed_sweep_resumes_the_same_experiment_and_runs(data_root, tmp_path):
    env = {**os.environ, "SSLSCALE_DATA": data_root, "RAY_ADDRESS": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    args = ["sweep", "--recipe", "debug", "--space", "method.simclr.temperature=grid:0.1,0.2,0.3", "--samples", "1",
            "--scheduler", "fifo", "--name", "k", f"train.steps={STEPS}", "train.checkpoint_every=5",
            "train.health_every=5"]
    # steps after the first ten are slow in the first driver: it is killed while the second trial still trains
    slow = {**env, faults.ENV: f"slow_step@11-{STEPS}"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([SSLSCALE, *args], cwd=tmp_path, env=slow, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            interrupted = _wait_for_checkpointed_second_trial(uri, proc, tmp_path / "first.log")
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is gone when the driver failed alone
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
            proc.wait()
    _, before = _children(uri)
    first = next(r for t, r in before.items() if t.endswith("_00000"))
    assert first.info.status == "FINISHED"

    resumed = subprocess.run([SSLSCALE, "sweep", "--resume", "k"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    parents, children = _children(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and "sslscale.resumed" in parents[0].data.tags
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children.values())
    again = next(r for t, r in children.items() if t.endswith("_00000"))
    assert again.info.run_id == first.info.run_id and "sslscale.resumed" not in again.data.tags  # not rerun
    cont = children[next(t for t in children if t.endswith("_00001"))]
    assert cont.info.run_id == interrupted and "sslscale.resumed" in cont.data.tags  # its own child run
    run_dir = cont.data.tags["sslscale.run_dir"]
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("attempt-")) == ["attempt-0", "attempt-1"]
    for run in children.values():
        assert [s for s, _ in tracking.history(uri, run.info.run_id, "loss")] == list(range(1, STEPS + 1))
    # Tune's own record of the interrupted trial: steps never go back (a rerun from step 0 would repeat them)
    assert "resumed sweep k" in resumed.stdout or "resuming sweep k" in resumed.stdout
    trial_dir = next(d for d in os.listdir(tmp_path / "runs" / "sweeps" / "k") if "_00001_" in d)
    with open(tmp_path / "runs" / "sweeps" / "k" / trial_dir / "progress.csv") as f:
        header, *rows = [line.strip().split(",") for line in f]
    steps = [int(r[header.index("step")]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, steps
