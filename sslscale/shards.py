"""Reading one prepared shard safely: the bytes are checked against the manifest's sha256 as they are read,
tar member names are validated, and every failure is one line that names the shard.

A shard is read whole into memory (shards are written a few thousand samples each, see corpus.prepare), hashed,
then parsed: a WebDataset tar of `{id:08d}.image.png` / `{id:08d}.label.cls` members, or a parquet table with
`id`, `image` (and `label`) columns. Tar members with an absolute path, `..`, a folder or a non-file type are
rejected: nothing in a shard can name a place outside it. Used by the training stream (stream.py, per epoch and
shard on Ray Data tasks) and by `corpus.read_split` (transfer evaluation).
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Optional

import pyarrow.parquet as pq

from sslscale import storage
from sslscale.errors import SslscaleError

Row = tuple[int, bytes, Optional[int]]  # (sample id, image bytes, label or None)
REPAIR = "re-run `sslscale data prepare` for this corpus (or set data.on_error=skip to train without it)"


class ShardError(SslscaleError):
    """A shard that cannot be used: missing, modified, truncated or unsafe."""


def read_shard(path: str, fmt: str, *, sha256: str = "", labelled: bool = False) -> list[Row]:
    """All rows of one shard; raises ShardError naming the shard when it cannot be trusted or read."""
    try:
        data = storage.read_bytes(path)  # a local, shared or object-store path
    except OSError as e:
        raise ShardError(f"shard {path} cannot be read ({e.strerror or str(e).strip()[:200]}): {REPAIR}") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        try:
            _parse(data, path, fmt, labelled)
        except ShardError as e:
            raise ShardError(f"{e} (its sha256 no longer matches manifest.json)") from None
        raise ShardError(f"shard {path} was modified after it was prepared (its sha256 no longer matches "
                         f"manifest.json): {REPAIR}")
    return _parse(data, path, fmt, labelled)


def _parse(data: bytes, path: str, fmt: str, labelled: bool) -> list[Row]:
    try:
        return _tar_rows(data, path, labelled) if fmt == "webdataset" else _parquet_rows(data, labelled)
    except ShardError:
        raise
    except (tarfile.TarError, OSError, ValueError, KeyError) as e:
        raise ShardError(f"shard {path} is truncated or corrupt ({type(e).__name__}: {str(e)[:120]}): "
                         f"{REPAIR}") from None


def _member_key(member: tarfile.TarInfo, path: str) -> tuple[int, str]:
    """(sample id, field) of a safe member name like 00000042.image.png; ShardError otherwise."""
    name = member.name
    key, _, field = name.partition(".")
    if name.startswith("/") or ".." in name or "/" in name or "\\" in name or not member.isfile():
        raise ShardError(f"shard {path} has an unsafe member {name!r} (absolute path, '..', folder or link): "
                         f"rejected; {REPAIR}")
    if not key.isdigit() or not field:
        raise ShardError(f"shard {path} has a member {name!r} that is not ID.FIELD (e.g. 00000042.image.png): "
                         f"{REPAIR}")
    return int(key), field


def _tar_rows(data: bytes, path: str, labelled: bool) -> list[Row]:
    files: dict[int, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            sid, field = _member_key(member, path)
            files.setdefault(sid, {})[field] = tar.extractfile(member).read()
        end = tar.offset  # where the end-of-archive marker (two zero blocks) must start
    if len(data) - end < 2 * tarfile.BLOCKSIZE or data[end:].strip(b"\0"):
        raise tarfile.ReadError("no end-of-archive marker after the last member: the file was cut short")
    return [(sid, f["image.png"], int(f["label.cls"]) if labelled else None) for sid, f in files.items()]


def _parquet_rows(data: bytes, labelled: bool) -> list[Row]:
    table = pq.read_table(io.BytesIO(data), columns=["id", "image"] + (["label"] if labelled else []))
    cols = table.to_pydict()
    return list(zip(cols["id"], cols["image"], cols.get("label", [None] * table.num_rows)))
