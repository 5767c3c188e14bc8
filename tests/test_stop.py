"""Stopping a run, end to end with the real CLI, Ray, DeepSpeed and MLflow (sqlite): SIGINT and SIGTERM end it KILLED
with one line (step, checkpoint, the --resume command, which then finishes it); a SIGKILLed driver leaves no worker
writing; a `--resume` while a live process holds the run is refused naming it; a Ray job stop ends the job's run
the same way within the job supervisor's default 3 s grace. The runs of minutes are `long` (make test-long)."""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from ray_nodes import RayNodes
from sslscale.runtime import tracking
from sslscale.training import checkpoint

SSLSCALE = os.path.join(os.path.dirname(sys.executable), "sslscale")
STEPS = 150  # far beyond where the stops land (the first checkpoints), short enough to finish in a minute or two
RUN = ["--recipe", "debug", f"train.steps={STEPS}", "train.checkpoint_every=5", "transfer.enabled=false"]
STOP_LINE = re.compile(rf"^sslscale: stopped by (SIG\w+); step (\d+) of {STEPS} is saved in (\S+); MLflow run (\w+) "
                       r"is KILLED; go on with: (sslscale (?:submit -- )?pretrain --resume \w+)$", re.M)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(data_root: str) -> dict:
    env = {**os.environ, "SSLSCALE_DATA": data_root, "RAY_DEDUP_LOGS": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _start(cwd, env: dict, args: list[str], log: str) -> subprocess.Popen:
    """`sslscale ARGS` as a user starts it in a terminal: its own session (Ray's local instance joins it)."""
    return subprocess.Popen([SSLSCALE, *args], cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _checkpoints(root: str) -> set[str]:
    return {os.path.join(d, n) for d, dirs, _ in os.walk(root) for n in dirs if n.startswith("checkpoint_")}


def _wait_for_checkpoint(root: str, proc: subprocess.Popen | None, after: int = 0, limit: float = 300) -> str:
    """The run folder under root once it holds an intact checkpoint past step `after` (while `proc` runs)."""
    deadline = time.time() + limit
    while time.time() < deadline and (proc is None or proc.poll() is None):
        for run in os.listdir(root) if os.path.isdir(root) else []:
            last = checkpoint.latest(os.path.join(root, run))
            if last and checkpoint.read_state(last)["step"] > after:
                time.sleep(1)  # well inside the run, not at its first report
                return os.path.join(root, run)
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint past step {after} within {limit}s (exit code {proc and proc.poll()})")


def _session(sid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                found.append(p)
        except (ProcessLookupError, PermissionError):
            pass
    return found


def _end_session(proc: subprocess.Popen) -> None:
    """Kill, by pid, whatever of this CLI run's session is left (the driver, a local Ray instance, workers)."""
    for p in _session(proc.pid):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def _stop(proc: subprocess.Popen, sig: int, log: str) -> tuple[re.Match, str]:
    """Send `sig`, wait for the exit; the stop line and everything the run printed after the signal."""
    offset = os.path.getsize(log)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    after = open(log).read()[offset:]
    found = STOP_LINE.search(after)
    assert found and found.group(1) == signal.Signals(sig).name, after[-3000:]
    return found, after


def _only_the_stop_line(after: str, line: str) -> None:
    """After the signal the run says one line; a worker's progress line printed just before it may precede it."""
    others = [x for x in after.splitlines() if x.strip() and x != line and not re.search(rf"\bstep \d+/{STEPS}\b", x)]
    assert not others, after[-3000:]


@pytest.mark.long
def test_sigint_and_sigterm_end_the_run_killed_and_its_resume_command_finishes_it(data_root, tmp_path):
    """Ctrl-C, then SIGTERM on the resumed run: each ends KILLED with one line; a --resume meanwhile is refused."""
    env, uri = _env(data_root), tracking.resolve_uri(f"sqlite:///{tmp_path}/mlruns.db")
    log = str(tmp_path / "first.log")
    proc = _start(tmp_path, env, ["pretrain", *RUN], log)
    try:
        run_dir = _wait_for_checkpoint(str(tmp_path / "runs"), proc)
        run_id = json.load(open(os.path.join(run_dir, "run.json")))["run_id"]
        second = subprocess.run([SSLSCALE, "pretrain", "--resume", run_id], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"is still being written by host {socket.gethostname()} pid {proc.pid}" in second.stderr
        stopped, after = _stop(proc, signal.SIGINT, log)
    finally:
        _end_session(proc)
    _only_the_stop_line(after, stopped.group(0))
    step, command = int(stopped.group(2)), stopped.group(5)
    assert stopped.group(3) == checkpoint.latest(run_dir) and stopped.group(4) == run_id
    assert tracking.get_run(uri, run_id).info.status == "KILLED" and not os.path.exists(f"{run_dir}/lease.json")

    log = str(tmp_path / "resumed.log")
    proc = _start(tmp_path, env, shlex.split(command)[1:], log)
    try:
        _wait_for_checkpoint(str(tmp_path / "runs"), proc, after=step)
        assert tracking.get_run(uri, run_id).info.status == "RUNNING"
        stopped, after = _stop(proc, signal.SIGTERM, log)
    finally:
        _end_session(proc)
    _only_the_stop_line(after, stopped.group(0))
    assert int(stopped.group(2)) > step and stopped.group(5) == command
    assert tracking.get_run(uri, run_id).info.status == "KILLED"

    done = subprocess.run(shlex.split(command.replace("sslscale", SSLSCALE, 1)), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert tracking.get_run(uri, run_id).info.status == "FINISHED"
    assert [s for s, _ in tracking.history(uri, run_id, "loss")] == list(range(1, STEPS + 1))  # each step once


@pytest.mark.long
def test_a_killed_driver_leaves_no_worker_writing_and_resume_finishes(data_root, tmp_path):
    """SIGKILL of the driver's process group: no checkpoint is written afterwards, nothing of the run stays
    alive, and --resume takes the dead driver's lease over and finishes the run."""
    env, uri = _env(data_root), tracking.resolve_uri(f"sqlite:///{tmp_path}/mlruns.db")
    proc = _start(tmp_path, env, ["pretrain", *RUN], str(tmp_path / "first.log"))
    try:
        run_dir = _wait_for_checkpoint(str(tmp_path / "runs"), proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(3)  # a checkpoint being written at the kill may still land (or tear)
        written = _checkpoints(run_dir)
        deadline = time.time() + 25
        while time.time() < deadline:
            assert _checkpoints(run_dir) == written, "a worker wrote a checkpoint after its driver was killed"
            time.sleep(1)
        assert not _session(proc.pid), [p.cmdline() for p in _session(proc.pid)]
    finally:
        _end_session(proc)
    killed_at = checkpoint.read_state(checkpoint.latest(run_dir))["step"]
    assert killed_at < STEPS and json.load(open(f"{run_dir}/lease.json"))["pid"] == proc.pid  # left by the dead
    run_id = json.load(open(os.path.join(run_dir, "run.json")))["run_id"]
    done = subprocess.run([SSLSCALE, "pretrain", "--resume", run_id], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming from the checkpoint at step {killed_at}" in done.stdout + done.stderr
    assert tracking.get_run(uri, run_id).info.status == "FINISHED" and not os.path.exists(f"{run_dir}/lease.json")


def test_resume_while_a_live_process_holds_the_run_is_refused_naming_it(data_root, tmp_path):
    """`--resume` of a run whose lease a live process holds: one line naming its host and pid, and nothing changes."""
    from pipelines import load_recipe

    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    cfg = load_recipe("debug")
    cfg.tracking.enabled = False
    (run_dir / "run.json").write_text(json.dumps({"run_id": "", "uri": "", "config": cfg.to_dict()}))
    hold = ("import sys, time; from sslscale.training import lease; lease.acquire(sys.argv[1], 'r'); "
            "print(1, flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        held = _holder(run_dir)
        refused = subprocess.run([SSLSCALE, "pretrain", "--resume", str(run_dir)], cwd=tmp_path, env=_env(data_root),
                                 capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith(f"sslscale: error: run {run_dir} is still being written by host "
                                     f"{socket.gethostname()} pid {holder.pid} ("), refused.stderr
    # the holder's heartbeat rewrites lease.json every few seconds, however long the refused command took: the
    # lease is unchanged when its holder (host, pid, start, token) is
    assert _holder(run_dir) == held and not list(run_dir.glob("attempt-*"))


def _holder(run_dir) -> dict:
    """Who holds a run's lease: lease.json less its heartbeat."""
    return {k: v for k, v in json.loads((run_dir / "lease.json").read_text()).items() if k != "heartbeat"}


@pytest.mark.long
def test_a_ray_job_stop_ends_the_run_killed_with_one_line_within_the_default_grace(data_root, tmp_path):
    """`sslscale submit --stop` (SIGTERM, then SIGKILL after Ray's default 3 s): the line is in the job's log, the
    run is KILLED, no checkpoint follows."""
    uri, storage = tracking.resolve_uri(f"sqlite:///{tmp_path}/mlruns.db"), tmp_path / "storage"
    nodes = RayNodes(env={"MLFLOW_TRACKING_URI": uri, "SSLSCALE_STORAGE": str(storage), "SSLSCALE_DATA": data_root})
    env = {**_env(data_root), **nodes.client_env()}

    def submit(*args):
        return subprocess.run([SSLSCALE, "submit", *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
    try:
        nodes.start_head(num_cpus=4)
        started = submit("--no-wait", "--", "pretrain", *RUN)
        assert started.returncode == 0, started.stderr
        job_id = re.search(r"submitted job (\S+)", started.stdout).group(1)
        run_dir = _wait_for_checkpoint(str(storage), None)
        stopped = submit("--stop", job_id)
        assert f"job {job_id}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
        written = _checkpoints(run_dir)
        time.sleep(10)
        assert _checkpoints(run_dir) == written, "a worker wrote a checkpoint after its job was stopped"
        logs = submit("--logs", job_id).stdout
    finally:
        nodes.stop()
    found = STOP_LINE.search(logs)
    assert found and found.group(1) == "SIGTERM", logs[-3000:]
    run_id = json.load(open(os.path.join(run_dir, "run.json")))["run_id"]
    assert found.group(5) == f"sslscale submit -- pretrain --resume {run_id}"
    assert tracking.get_run(uri, run_id).info.status == "KILLED"
