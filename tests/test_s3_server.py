"""The S3 test helper: a real SeaweedFS S3 server on 127.0.0.1 that pyarrow.fs reads and writes, refusing bad keys."""
from __future__ import annotations

import os

import pytest

from s3_server import S3Server


def _listening(pid: int) -> set[str]:
    """Local addresses (hex ip:port from /proc/net/tcp*) of the TCP sockets `pid` listens on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    found.add(cols[1])
    return found


def _weed_with_port(port: int) -> list[int]:
    """Pids of live weed processes started with this S3 port."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if any(a.endswith(b"weed") for a in args[:1]) and f"-s3.port={port}".encode() in args:
            pids.append(int(entry))
    return pids


@pytest.mark.long
def test_s3_server(tmp_path, monkeypatch):
    """Start, make a bucket, write/list/read/delete through pyarrow.fs, refuse a wrong secret, stop: nothing left."""
    import boto3
    import botocore.exceptions
    import pyarrow.fs as pafs

    s3 = S3Server(tmp_path / "s3")
    try:
        s3.start()
        pid = s3.proc.pid
        assert _listening(pid) and all(a.startswith("0100007F:") for a in _listening(pid))  # 127.0.0.1 only
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        s3.make_bucket("sslscale-test")

        fs, root = pafs.FileSystem.from_uri(s3.uri("sslscale-test/run"))
        assert root == "sslscale-test/run"
        with fs.open_output_stream(f"{root}/ckpt/model.bin") as f:
            f.write(b"weights")
        fs.create_dir(f"{root}/empty")  # a marker object on S3
        listed = {i.path: i.type for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))}
        assert listed == {f"{root}/ckpt": pafs.FileType.Directory, f"{root}/ckpt/model.bin": pafs.FileType.File,
                          f"{root}/empty": pafs.FileType.Directory}
        with fs.open_input_stream(f"{root}/ckpt/model.bin") as f:
            assert f.read() == b"weights"
        plain, path = pafs.FileSystem.from_uri("s3://sslscale-test/run")  # the endpoint from AWS_ENDPOINT_URL
        with plain.open_input_stream(f"{path}/ckpt/model.bin") as f:
            assert f.read() == b"weights"
        fs.delete_dir(root)
        assert fs.get_file_info(f"{root}/ckpt/model.bin").type == pafs.FileType.NotFound

        with fs.open_output_stream(f"{root}/kept.txt") as f:
            f.write(b"x")
        wrong = pafs.S3FileSystem(access_key=s3.access_key, secret_key="wrong-secret", region=s3.region,
                                  endpoint_override=f"127.0.0.1:{s3.port}", scheme="http")
        with pytest.raises(OSError, match="ACCESS_DENIED|SIGNATURE_DOES_NOT_MATCH"):
            with wrong.open_input_stream(f"{root}/kept.txt") as f:
                f.read()
        client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                              aws_secret_access_key="wrong-secret", region_name=s3.region)
        with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
            client.list_objects_v2(Bucket="sslscale-test")
    finally:
        s3.stop()
    assert s3.proc is None and s3.home is None
    assert _weed_with_port(s3.port) == []
