"""Where files live: a local or shared POSIX path, or an object-store URI (`s3://bucket/prefix`), through pyarrow.fs.

`train.storage` (run folders, checkpoints, positions, skip records, exports) and a corpus folder may be either; every
function here takes a path or URI and hides which. A URI keeps its query (`?endpoint_override=host:port&scheme=http`
for an S3-compatible server) through `join`; credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never
from the URI. Object stores have no folders: a folder exists when something lies under it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from sslscale.errors import SslscaleError


def is_uri(path: str) -> bool:
    """Whether `path` names an object store (s3://, gs://, ...), not a local or shared POSIX path."""
    return "://" in str(path) and not str(path).startswith("file://")


def absolute(path: str) -> str:
    """A URI as it is; a local path made absolute (Tune and Ray jobs change the working directory)."""
    path = str(path)
    return path if is_uri(path) else os.path.abspath(path.removeprefix("file://"))


def join(base: str, *parts: str) -> str:
    """`base`/part/...; a URI keeps its scheme and query."""
    if not is_uri(base):
        return os.path.join(base, *parts)
    u = urlsplit(base)
    return urlunsplit(u._replace(path="/".join([u.path.rstrip("/"), *(p.strip("/") for p in parts)])))


def name(path: str) -> str:
    """The last part of a path or URI."""
    return (urlsplit(path).path if is_uri(path) else path).rstrip("/").rsplit("/", 1)[-1]


def parent(path: str) -> str:
    if not is_uri(path):
        return os.path.dirname(path.rstrip("/"))
    u = urlsplit(path)
    return urlunsplit(u._replace(path=u.path.rstrip("/").rsplit("/", 1)[0]))


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if not is_uri(path):
        return pafs.LocalFileSystem(), absolute(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a bad URI or store
        raise SslscaleError(f"cannot open {path} ({type(e).__name__}: {str(e).strip()[:200]}); check the URI and "
                            f"the store's credentials (AWS_ACCESS_KEY_ID, ...) and endpoint") from None


def _child(base: str, fs_path: str) -> str:
    """The path or URI of `fs_path` (a path inside base's filesystem, as pyarrow lists it)."""
    if not is_uri(base):
        return fs_path
    u = urlsplit(base)
    return urlunsplit(u._replace(netloc=fs_path.split("/", 1)[0], path="/" + fs_path.split("/", 1)[1]))


def _type(path: str) -> pafs.FileType:
    fs, p = _fs(path)
    return fs.get_file_info(p).type


def isfile(path: str) -> bool:
    return _type(path) == pafs.FileType.File


def isdir(path: str) -> bool:
    """A folder; on an object store, a prefix something lies under."""
    if not is_uri(path):
        return os.path.isdir(path)
    return _type(path) == pafs.FileType.Directory or bool(listdir(path))


def exists(path: str) -> bool:
    return isfile(path) or isdir(path)


def listdir(path: str) -> list[str]:
    """Names directly under `path` ([] when there is nothing)."""
    fs, p = _fs(path)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(p, allow_not_found=True)))


def find(path: str, filename: str) -> list[str]:
    """Every file named `filename` anywhere under `path`, as paths or URIs like `path`."""
    fs, p = _fs(path)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    return sorted(_child(path, i.path) for i in infos if i.type == pafs.FileType.File and i.base_name == filename)


def makedirs(path: str) -> None:
    fs, p = _fs(path)
    fs.create_dir(p, recursive=True)


def read_bytes(path: str) -> bytes:
    """A whole file; OSError (FileNotFoundError locally) when it cannot be read."""
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_chunks(path: str, chunk_bytes: int) -> Iterator[bytes]:
    """A file's bytes as consecutive chunks of `chunk_bytes` (the last one may be short), read one at a time so
    that only one is held; OSError (FileNotFoundError locally) when it cannot be read, opened or part-way."""
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        while chunk := _read_full(f, chunk_bytes):
            yield chunk


def _read_full(f, n: int) -> bytes:
    """n bytes from a stream, fewer only at its end (a network stream may return less per read)."""
    first = f.read(n)
    if len(first) in (0, n):
        return first
    parts, have = [first], len(first)
    while have < n and (more := f.read(n - have)):
        parts.append(more)
        have += len(more)
    return b"".join(parts)


def read_json(path: str):
    return json.loads(read_bytes(path))


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file: a reader sees the old one or the new one, never half (a rename locally, one PUT on S3)."""
    fs, p = _fs(path)
    if not is_uri(path):
        fs.create_dir(os.path.dirname(p), recursive=True)
        tmp = f"{p}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
        return
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_json(path: str, data, indent: int | None = None) -> None:
    write_bytes(path, json.dumps(data, indent=indent).encode())


def sha256(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for chunk in read_chunks(path, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_chunks(path: str, chunk_bytes: int) -> tuple[str, list[str]]:
    """Hex sha256 of a whole file and of each consecutive `chunk_bytes` of it (the last may be short), in one read."""
    whole, parts = hashlib.sha256(), []
    for chunk in read_chunks(path, chunk_bytes):
        whole.update(chunk)
        parts.append(hashlib.sha256(chunk).hexdigest())
    return whole.hexdigest(), parts


def remove_tree(path: str) -> None:
    """Delete a folder and what it holds; nothing when it does not exist."""
    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.NotFound:
        fs.delete_dir(p)


def copy_file(src: str, dst: str) -> None:
    """Copy one file between any two places (local, shared or object store)."""
    sfs, sp = _fs(src)
    dfs, dp = _fs(dst)
    if not is_uri(dst):
        dfs.create_dir(os.path.dirname(dp), recursive=True)
        dp_tmp = f"{dp}.tmp{os.getpid()}"
        pafs.copy_files(sp, dp_tmp, source_filesystem=sfs, destination_filesystem=dfs)
        os.replace(dp_tmp, dp)
        return
    pafs.copy_files(sp, dp, source_filesystem=sfs, destination_filesystem=dfs)


@contextlib.contextmanager
def local(path: str):
    """A local path holding `path`'s file or folder: itself when local, else a temporary download (removed after)."""
    if not is_uri(path):
        yield path
        return
    folder = tempfile.mkdtemp(prefix="sslscale-fetch-")
    try:
        target = os.path.join(folder, name(path))
        fs, p = _fs(path)
        pafs.copy_files(p, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)
