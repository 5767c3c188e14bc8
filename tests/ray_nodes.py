"""Test helper: a real multi-node Ray cluster on this machine, started with `ray start` as a user would start one.

The head and each added node get their own temp dir (under a short /tmp folder, removed at the end); every process of a node is found by that folder in its
command line (and their children: Ray's workers), and stopped by process id at the end, never by `ray stop`,
which would stop every Ray instance on the machine. Token auth stays on (Ray 2.60's default) with a token made here.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import psutil


# one token for every cluster of a test session: Ray's client caches the first token it loads, process-wide
TOKEN = secrets.token_hex(16)


def free_port() -> int:
    """A free port on 127.0.0.1 outside Ray's worker port range (10002-19999)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 20000:
            return port


class RayNodes:
    def __init__(self, env: dict | None = None):
        # short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes (pytest's tmp_path is too long)
        self.folder, self.token = tempfile.mkdtemp(prefix="sslray-"), TOKEN
        self.dashboard_port = free_port()
        self.address = ""  # the GCS address, known once the head is up
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        bindir = os.path.dirname(sys.executable)  # jobs run `python`: this venv's, with sslscale installed
        self.env = {**os.environ, **(env or {}), "PATH": f"{bindir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.temp_dirs: list[str] = []

    def client_env(self) -> dict:
        """What a job client needs: the dashboard address and the token."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_API_SERVER_ADDRESS": self.dashboard}

    def _start(self, name: str, args: list[str], limit: float = 120) -> str:
        temp = os.path.join(self.folder, name)
        self.temp_dirs.append(temp)
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        out = subprocess.run([ray, "start", f"--temp-dir={temp}", "--disable-usage-stats", *args], env=self.env,
                             capture_output=True, text=True, timeout=limit)
        if out.returncode:
            self.stop()
            raise RuntimeError(f"ray start ({name}) failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out.stdout + out.stderr

    def start_head(self, num_cpus: float, resources: str = "{}") -> None:
        # every fixed default port (Ray client 10001, the agent's 52365) taken afresh: another Ray instance on this
        # machine, or one a killed test left, must not make this head's job agent fail to start
        text = self._start("head", ["--head", "--node-ip-address=127.0.0.1", "--port=0",
                                    "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                                    f"--ray-client-server-port={free_port()}",
                                    f"--dashboard-agent-listen-port={free_port()}",
                                    f"--num-cpus={num_cpus}", f"--resources={resources}"])
        found = re.search(r"ray start --address='([^']+)'", re.sub(r"\x1b\[[0-9;]*m", "", text))
        if not found:
            self.stop()
            raise RuntimeError(f"no GCS address in ray start's output:\n{text[-3000:]}")
        self.address = found.group(1)

    def add_node(self, name: str, num_cpus: float, resources: str = "{}") -> None:
        self._start(name, [f"--address={self.address}", f"--num-cpus={num_cpus}", f"--resources={resources}",
                           "--dashboard-agent-listen-port=0"])

    def pids(self, name: str | None = None) -> set[int]:
        """Every process of the cluster (or of one node): those naming its temp dir, and their descendants."""
        dirs = [d for d in self.temp_dirs if name is None or os.path.basename(d) == name]
        # the head's Ray client server names neither: it is found by the cluster's GCS address
        marks = [d + "/" for d in dirs] + ([f"={self.address} "] if name is None and self.address else [])
        roots = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            line = " ".join(p.info["cmdline"] or [])
            if any(m in line + " " for m in marks) or any(line.endswith(d) for d in dirs):
                roots.add(p)
        found = set(roots)
        for p in roots:
            try:
                found.update(p.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return {p.pid for p in found}

    def stop(self, name: str | None = None, sig: int = signal.SIGTERM, wait: float = 20) -> None:
        """Stop every process of the cluster (or of one node) by pid: `sig`, then SIGKILL after `wait` seconds."""
        procs = []
        for pid in self.pids(name):
            try:
                procs.append(psutil.Process(pid))
                os.kill(pid, sig)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        _, alive = psutil.wait_procs(procs, timeout=wait)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        if name is None:
            shutil.rmtree(self.folder, ignore_errors=True)
