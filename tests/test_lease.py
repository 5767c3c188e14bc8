"""The run folder's lease (sslscale/training/lease.py): one live writer per run, taken over once its holder is gone, and
workers that stop when their driver died, released the run or lost it. Real processes, no Ray; a few seconds."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sslscale.errors import SslscaleError
from sslscale.training import lease

# a holder in its own process: takes the lease, prints what workers get, then lives until killed
HOLD = ("import json, sys, time; from sslscale.training import lease; held = lease.acquire(sys.argv[1], 'r'); "
        "print(json.dumps(held.for_workers()), flush=True); time.sleep(120)")
# a worker's watch in its own process, checking every 0.1 s
WATCH = ("import json, sys, time; from sslscale.training import lease; lease.WATCH_S = 0.1; "
         "lease.watch(json.loads(sys.argv[1])); time.sleep(60)")


def _python(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], text=True, **kw)


@pytest.fixture
def holder(tmp_path):
    proc = _python(HOLD, str(tmp_path), stdout=subprocess.PIPE)
    info = json.loads(proc.stdout.readline())
    yield proc, info
    proc.kill()
    proc.wait()


def _until(condition, limit: float = 30) -> bool:
    """Whether `condition()` came true within `limit` seconds (polled): what a test waits for, however slow the
    machine is that day."""
    deadline = time.time() + limit
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def _exits(proc: subprocess.Popen, limit: float = 20) -> tuple[int, str]:
    _, err = proc.communicate(timeout=limit)
    return proc.returncode, err


def test_a_lease_is_taken_refreshed_and_released(tmp_path, monkeypatch):
    """The driver's lease names this host and pid, its heartbeat advances, and release removes the file."""
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.1)
    held = lease.acquire(str(tmp_path), "r")
    first = lease.read(str(tmp_path))
    assert (first["host"], first["pid"]) == (socket.gethostname(), os.getpid())
    assert _until(lambda: lease.read(str(tmp_path))["heartbeat"] > first["heartbeat"]) and not held.lost
    held.release()
    assert lease.read(str(tmp_path)) is None


def test_a_live_holder_is_refused_in_one_line_naming_it_then_taken_over_once_dead(tmp_path, holder):
    """A second writer is refused while the holder lives (host and pid named); once it is killed, its lease is taken."""
    proc, _ = holder
    with pytest.raises(SslscaleError) as refused:
        lease.acquire(str(tmp_path), "r")
    line = str(refused.value)
    assert "\n" not in line and f"host {socket.gethostname()} pid {proc.pid}" in line and f"kill {proc.pid}" in line
    proc.kill()
    proc.wait()
    held = lease.acquire(str(tmp_path), "r")
    assert lease.read(str(tmp_path))["pid"] == os.getpid()
    held.release()


def test_a_holder_on_another_machine_counts_until_its_heartbeat_is_stale(tmp_path):
    """A pid on another host cannot be checked: a fresh heartbeat is refused (saying how long), a stale one taken."""
    other = {"host": "node-7", "pid": 4242, "started": "", "machine": "node-7|boot|ns", "since": time.time(),
             "heartbeat": time.time(), "token": "theirs"}
    (tmp_path / lease.FILE).write_text(json.dumps(other))
    with pytest.raises(SslscaleError, match=r"host node-7 pid 4242 .*`kill 4242` on node-7.*60 s old"):
        lease.acquire(str(tmp_path), "r")
    (tmp_path / lease.FILE).write_text(json.dumps({**other, "heartbeat": time.time() - lease.STALE_S - 1}))
    lease.acquire(str(tmp_path), "r").release()


def test_a_reused_pid_or_an_unreadable_lease_does_not_hold_the_run(tmp_path):
    """A live pid that started at another time is another process; a torn lease file holds nothing."""
    me = lease.acquire(str(tmp_path), "r")
    me.release()
    parent = {**me.info, "pid": os.getppid(), "started": "1", "token": "old"}  # alive, but not the holder's start
    (tmp_path / lease.FILE).write_text(json.dumps(parent))
    lease.acquire(str(tmp_path), "r").release()
    (tmp_path / lease.FILE).write_text('{"host": "vm", "pi')
    lease.acquire(str(tmp_path), "r").release()


def test_only_one_of_several_racing_processes_takes_a_free_lease(tmp_path):
    """Four processes taking a free lease at once: exactly one holds it, the others are refused."""
    code = ("import sys, time; from sslscale.training import lease\ntry:\n    lease.acquire(sys.argv[1], 'r')\n"
            "    print('won', flush=True); time.sleep(5)\nexcept Exception as e:\n    print('lost', flush=True)")
    procs = [_python(code, str(tmp_path), stdout=subprocess.PIPE) for _ in range(4)]
    outcomes = sorted(p.stdout.readline().strip() for p in procs)
    for p in procs:
        p.kill()
        p.wait()
    assert outcomes == ["lost", "lost", "lost", "won"]


def test_workers_stop_when_their_driver_dies(tmp_path, holder):
    """SIGKILL of the holder (a driver killed by the OOM killer) ends a watching worker, saying why."""
    proc, info = holder
    worker = _python(WATCH, json.dumps(info), stderr=subprocess.PIPE)
    time.sleep(0.5)
    assert worker.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    rc, err = _exits(worker)
    assert rc == 1 and f"pid {proc.pid}" in err and "has exited" in err


def test_workers_stop_silently_on_release_and_loudly_on_takeover(tmp_path, monkeypatch):
    """A released lease (the driver stopped the run) ends workers without a word; a lease taken by another
    process ends them with a line, and the old holder sees it lost."""
    monkeypatch.setattr(lease, "HEARTBEAT_S", 1.0)
    held = lease.acquire(str(tmp_path), "r")
    worker = _python(WATCH, json.dumps(held.for_workers()), stderr=subprocess.PIPE)
    time.sleep(0.5)
    held.release()
    assert _exits(worker) == (1, "")

    held = lease.acquire(str(tmp_path), "r")
    worker = _python(WATCH, json.dumps(held.for_workers()), stderr=subprocess.PIPE)
    time.sleep(0.5)
    (tmp_path / "taker.json").write_text(json.dumps({**held.info, "pid": 4242, "token": "newer"}))
    os.replace(tmp_path / "taker.json", tmp_path / lease.FILE)  # as a takeover writes it: whole
    rc, err = _exits(worker)
    assert rc == 1 and "lost the lease to" in err and "pid 4242" in err
    assert _until(lambda: held.lost)  # the holder's next heartbeat finds it
