"""The run folder's lease: which process writes a run now, so that a second `--resume` never becomes a second writer.

`lease.json` in the run folder names its holder: host, pid (with the process's start time, so a reused pid is not
taken for it), when it took the lease, a heartbeat and a random token. The driver of a run `acquire`s it before it
writes anything, refreshes the heartbeat every HEARTBEAT_S in a thread, and releases it when the run ends (finished,
failed or stopped). A lease is refused, in one line naming its holder, while that holder lives; it is taken over
once the holder is gone: on this machine (same boot and pid namespace) its process has exited; on another machine
(a cluster's shared filesystem, where a pid cannot be checked) its heartbeat is older than STALE_S (clocks of the
machines must agree to well within that).

Rank 0 of the Ray Train workers writes the checkpoints, so the workers `watch` the lease: once its holder died, or
it was released (the driver was stopped) or taken over, or its heartbeat went stale, they exit within WATCH_S
instead of writing another checkpoint. The holder is thus the one process whose workers may still write.

Plain file operations (a hard link to create, os.replace to refresh, os.rename to take over) are atomic on a POSIX
filesystem. A run folder on an object store (s3://...) gets no lease file yet (that needs conditional puts, in
these few functions and nowhere else): there workers watch only a driver on their own machine.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from functools import lru_cache

from sslscale.errors import SslscaleError

FILE = "lease.json"
HEARTBEAT_S = 5.0  # the holder rewrites its heartbeat this often
STALE_S = 60.0  # a holder on another machine whose heartbeat is older counts as gone
WATCH_S = 1.0  # how often a worker checks the lease


@lru_cache(maxsize=1)
def _machine() -> str:
    """What makes a pid checkable from here: the same boot of the same kernel and the same pid namespace."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(open(path).read().strip() if path.endswith("id") else os.readlink(path))
        except OSError:
            parts.append("")
    return f"{socket.gethostname()}|{'|'.join(parts)}"


def _stat(pid: int) -> tuple[str, str]:
    """(state, start time in clock ticks since boot) of a process from /proc; ('', '') where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "", ""


def _alive(pid: int, started: str) -> bool:
    """Whether the process that took the lease still runs: not exited (nor a zombie), and not a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's process
    state, start = _stat(pid)
    return state != "Z" and (not started or start in ("", started))


def read(run_dir: str) -> dict | None:
    """The lease in a run folder: None when there is none, {} when it is unreadable."""
    return _load(os.path.join(run_dir, FILE))


def _load(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def gone(holder: dict, now: float | None = None) -> str:
    """Why the holder no longer writes ('' while it does): its process exited, or its heartbeat is stale."""
    if not holder.get("token"):
        return "the lease is unreadable"
    if holder.get("machine") == _machine():
        return "" if _alive(holder["pid"], holder.get("started", "")) else "its process has exited"
    age = (now or time.time()) - holder.get("heartbeat", 0)
    return f"its heartbeat is {age:.0f} s old" if age > STALE_S else ""


def describe(holder: dict) -> str:
    """'host H pid P (since 12:01:02, heartbeat 3 s ago)'."""
    since = time.strftime("%H:%M:%S", time.localtime(holder.get("since", 0)))
    return (f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} (since {since}, heartbeat "
            f"{time.time() - holder.get('heartbeat', 0):.0f} s ago)")


def _write_new(path: str, info: dict) -> bool:
    """Create the lease file holding `info` unless one exists (a link is atomic and never shows a half file)."""
    tmp = f"{path}.{info['token']}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _set_aside(path: str, stale: dict) -> None:
    """Remove the stale lease, unless another process replaced it meanwhile: that one goes back, unless a third
    took the place by then (its holder then sees its lease lost, and its workers stop)."""
    aside = f"{path}.{uuid.uuid4().hex}.old"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if (_load(aside) or {}).get("token") != stale.get("token"):
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    os.unlink(aside)


class Lease:
    """A lease this process holds; a thread refreshes its heartbeat until `release`. `lost` turns true when
    another process took it over (this one's workers then stop)."""

    def __init__(self, path: str | None, info: dict):
        self.path, self.info, self.lost = path, info, False
        self._stop = threading.Event()
        if path:
            threading.Thread(target=self._beat, daemon=True, name="sslscale-lease").start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if (_load(self.path) or {}).get("token") != self.info["token"]:
                self.lost = True
                return
            tmp = f"{self.path}.{self.info['token']}.tmp"
            try:
                with open(tmp, "w") as f:
                    json.dump({**self.info, "heartbeat": time.time()}, f)
                os.replace(tmp, self.path)
            except OSError:  # a full disk or a hiccup of a shared filesystem: the next beat tries again
                continue

    def for_workers(self) -> dict:
        """What `watch` needs on a worker."""
        return {**self.info, "path": self.path}

    def holder(self) -> str:
        """Who holds the run now (for the message when this process lost it)."""
        return describe(_load(self.path) or {})

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this process's."""
        self._stop.set()
        if self.path and (_load(self.path) or {}).get("token") == self.info["token"]:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def acquire(run_dir: str, run_name: str) -> Lease:
    """Take the run folder's lease for this process, taking over one whose holder is gone; a live holder gets one
    line naming it. `run_name` (run id or folder) is how the message names the run."""
    path = os.path.join(run_dir, FILE)
    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": _stat(os.getpid())[1],
            "machine": _machine(), "since": now, "heartbeat": now, "token": uuid.uuid4().hex}
    if "://" in run_dir and not run_dir.startswith("file://"):
        return Lease(None, info)  # an object store: no lease file yet (see the module's docstring)
    for _ in range(5):
        if _write_new(path, info):
            return Lease(path, info)
        holder = _load(path)
        if holder is None:
            continue  # released meanwhile
        mine = holder.get("machine") == info["machine"] and holder.get("pid") == os.getpid()  # left by this process
        if not gone(holder) and not mine:
            on_other = holder.get("machine") != info["machine"]
            raise SslscaleError(
                f"run {run_name} is still being written by {describe(holder)}: stop that process first (Ctrl-C, "
                f"`kill {holder.get('pid')}`" + (f" on {holder.get('host')}" if on_other else "") + ")"
                + (f", or wait until its heartbeat is {STALE_S:.0f} s old" if on_other else ""))
        _set_aside(path, holder)
    raise SslscaleError(f"run {run_name}: could not take its lease {path}: other processes keep taking it")


def watch(info: dict) -> None:
    """On a Ray Train worker: a daemon thread that ends this process once the lease `info` (the driver's) no longer
    names a live holder, so a dead or stopped driver's workers never write another checkpoint. A worker that
    cannot see the lease file at the start (a run folder it does not share) watches the driver's pid only."""
    if info:
        see_file = bool(info["path"]) and _load(info["path"]) is not None
        threading.Thread(target=_watch, args=(info, see_file), daemon=True, name="sslscale-lease-watch").start()


def _watch(info: dict, see_file: bool) -> None:
    while True:
        time.sleep(WATCH_S)
        why = _why_stop(info, see_file)
        if why is not None:
            if why:  # a deliberate stop (released) says nothing: the driver prints the one line
                print(f"sslscale worker pid {os.getpid()}: the run's driver (host {info['host']} pid {info['pid']}) "
                      f"{why}; this worker stops without writing another checkpoint", file=sys.stderr, flush=True)
            os._exit(1)


def _why_stop(info: dict, see_file: bool) -> str | None:
    """None while the driver holds the lease and lives; '' when it released it; else why the worker must stop."""
    if info["machine"] == _machine() and not _alive(info["pid"], info["started"]):
        return "has exited"
    if not see_file:
        return None
    current = _load(info["path"])
    if current is None:
        return ""
    if current.get("token") != info["token"]:
        return f"lost the lease to {describe(current)}"
    if info["machine"] != _machine() and gone(current):
        return f"stopped its heartbeat ({gone(current)})"
    return None
