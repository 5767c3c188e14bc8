"""Test helper: a real PostgreSQL server on 127.0.0.1 (Debian `postgresql`, see `make postgres`) with a database
`mlflow`, trust authentication and fsync off. Stopped by its process id, and never left running when start fails.

initdb and postgres refuse to run as root: as root they run as the `postgres` user (`runuser -u postgres --`), so the
cluster lives in a temporary folder that user owns (pytest's tmp_path sits under a folder only root may enter); it is
the same temporary folder when not root (a Unix socket path must stay under 108 bytes). The log goes to FOLDER.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

USER = "postgres"  # the database superuser (initdb -U), whoever runs the server


def binaries() -> str | None:
    """The folder holding initdb and postgres: PATH first, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres", path=os.path.dirname(os.path.realpath(found))):
        return os.path.dirname(os.path.realpath(found))
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(f.split("/")[-2].split(".")[0]))
    return next((f for f in reversed(folders) if os.path.exists(f"{f}/initdb") and os.path.exists(f"{f}/postgres")),
                None)


class Postgres:
    """`Postgres(folder).start()` then `.uri` (postgresql://postgres@127.0.0.1:PORT/mlflow); `.stop()` in a finally."""

    def __init__(self, folder):
        self.bin = binaries()
        if self.bin is None:
            raise RuntimeError("no PostgreSQL server found (initdb and postgres, on PATH or in "
                               "/usr/lib/postgresql/*/bin): run `make postgres`")
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                pwd.getpwnam(USER)
            except KeyError:
                raise RuntimeError("running as root, PostgreSQL needs the `postgres` user to run as (Debian's "
                                   "postgresql package creates it): `make postgres`, or run the tests as non-root")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.home, self.proc, self.pid, self.log = str(folder), None, None, None, None
        self.uri = f"postgresql://{USER}@127.0.0.1:{self.port}/mlflow"

    def _cmd(self, *args: str) -> list[str]:
        return (["runuser", "-u", USER, "--"] if self.as_root else []) + list(args)

    def _initdb(self) -> None:
        self.home = tempfile.mkdtemp(prefix="sslscale-pg-")
        os.makedirs(f"{self.home}/socket")
        if self.as_root:
            entry = pwd.getpwnam(USER)
            for path in (self.home, f"{self.home}/socket"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        subprocess.run(self._cmd(f"{self.bin}/initdb", "-D", f"{self.home}/data", "-U", USER, "-A", "trust",
                                 "-E", "UTF8", "--no-sync", "--no-instructions"),
                       stdout=self.log, stderr=subprocess.STDOUT, check=True, cwd=self.home, timeout=120)

    def start(self, limit: float = 60) -> None:
        """initdb (first start), run postgres, wait until it accepts connections, create the database `mlflow`."""
        import psycopg2

        os.makedirs(self.folder, exist_ok=True)
        self.log = open(os.path.join(self.folder, "postgres.log"), "a")
        try:
            if self.home is None:
                self._initdb()
            self.proc = subprocess.Popen(
                self._cmd(f"{self.bin}/postgres", "-D", f"{self.home}/data", "-k", f"{self.home}/socket",
                          "-h", "127.0.0.1", "-p", str(self.port), "-F", "-c", "full_page_writes=off",
                          "-c", "synchronous_commit=off"),
                stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home)
            deadline = time.time() + limit
            while True:
                try:
                    conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
                                            connect_timeout=2)
                    break
                except psycopg2.OperationalError:
                    if self.proc.poll() is not None or time.time() > deadline:
                        why = "exited" if self.proc.poll() is not None else f"did not accept connections in {limit}s"
                        raise RuntimeError(f"PostgreSQL {why}; see {self.folder}/postgres.log") from None
                    time.sleep(0.2)
            self.pid = self._postmaster()
            conn.autocommit = True  # CREATE DATABASE runs outside a transaction (so no `with conn`)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = 'mlflow'")
                    if cur.fetchone() is None:
                        cur.execute("CREATE DATABASE mlflow")
            finally:
                conn.close()
        except BaseException:
            self.stop()
            raise

    def _postmaster(self) -> int | None:
        """The postmaster's pid (as root, runuser's child), from the file it writes once it runs."""
        try:
            with open(f"{self.home}/data/postmaster.pid") as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def stop(self, keep: bool = False, limit: float = 30) -> None:
        """SIGINT to the postmaster (fast shutdown), SIGKILL to its process group after `limit` s (at once when it
        never wrote its pid). The cluster's folder is removed unless keep=True (start() then runs it again)."""
        if self.proc is not None:
            pid = self.pid or (self._postmaster() if self.home else None)
            try:
                if pid:
                    os.kill(pid, signal.SIGINT)
                self.proc.wait(timeout=limit if pid else 0)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:  # the whole group: runuser, the postmaster, its backends
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
            self.proc, self.pid = None, None
        if self.log is not None:
            self.log.close()
            self.log = None
        if not keep and self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None
