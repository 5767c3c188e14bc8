"""Test helper: a real `mlflow server` on 127.0.0.1 (sqlite store in a folder), which a test can stop and restart
on the same port and store. Always stopped by its process group id."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


class MlflowServer:
    def __init__(self, folder):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.proc = str(folder), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, limit: float = 90) -> None:
        mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
        cmd = [mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.folder}/store.db",
               "--default-artifact-root", f"{self.folder}/artifacts"]
        self.log = open(os.path.join(self.folder, "server.log"), "a")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: 8 processes, ~1.3 GB
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        deadline = time.time() + limit
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {limit}s; see {self.folder}/server.log")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
