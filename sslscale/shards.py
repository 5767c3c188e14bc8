"""Reading one prepared shard safely: the bytes are checked against the manifest's sha256 as they are read,
tar member names are validated, and every failure is one line that names the shard.

A shard is read whole into memory (shards are written a few thousand samples each, see corpus.prepare), hashed,
then parsed: a WebDataset tar of `{id:08d}.image.png` (or another data member, such as text's `text.ids`) /
`{id:08d}.label.cls` members, or a parquet table with `id`, `image` (or `text`) (and `label`) columns. Tar
members with an absolute path, `..`, a folder or a non-file type are rejected: nothing in a shard can name a place
outside it. Used by the training stream (stream.py, per epoch and
shard on Ray Data tasks) and by `corpus.read_split` (transfer evaluation).
"""
from __future__ import annotations

import hashlib
import io
from typing import Optional

import pyarrow.parquet as pq

from sslscale import storage
from sslscale.errors import SslscaleError

Row = tuple[int, bytes, Optional[int]]  # (sample id, the data member's bytes (an image, token ids), label or None)
REPAIR = "re-run `sslscale data prepare` for this corpus (or set data.on_error=skip to train without it)"


class ShardError(SslscaleError):
    """A shard that cannot be used: missing, modified, truncated or unsafe."""


def data_member(fields: dict) -> str:
    """The member (FIELD.ENCODING) that holds a corpus's data, from its manifest's fields: image.png, text.ids."""
    name = next(k for k in fields if k != "label")
    return f"{name}.{fields[name].get('encoding', 'png')}"


def read_shard(path: str, fmt: str, *, sha256: str = "", labelled: bool = False,
               member: str = "image.png") -> list[Row]:
    """All rows of one shard (its `member`'s bytes: see data_member); raises ShardError naming the shard when it
    cannot be trusted or read."""
    try:
        data = storage.read_bytes(path)  # a local, shared or object-store path
    except OSError as e:
        raise ShardError(f"shard {path} cannot be read ({e.strerror or str(e).strip()[:200]}): {REPAIR}") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        try:
            _parse(data, path, fmt, labelled, False, member)
        except ShardError as e:
            raise ShardError(f"{e} (its sha256 no longer matches manifest.json)") from None
        raise ShardError(f"shard {path} was modified after it was prepared (its sha256 no longer matches "
                         f"manifest.json): {REPAIR}")
    return _parse(data, path, fmt, labelled, bool(sha256), member)


def _parse(data: bytes, path: str, fmt: str, labelled: bool, verified: bool, member: str) -> list[Row]:
    try:
        if fmt == "webdataset":
            return _tar_rows(data, path, labelled, verified, member)
        return _parquet_rows(data, labelled, member.partition(".")[0])
    except ShardError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise ShardError(f"shard {path} is truncated or corrupt ({type(e).__name__}: {str(e)[:120]}): "
                         f"{REPAIR}") from None


def _member_key(name: str, plain_file: bool, path: str) -> tuple[int, str]:
    """(sample id, field) of a safe member name like 00000042.image.png; ShardError otherwise."""
    key, _, field = name.partition(".")
    if name.startswith("/") or ".." in name or "/" in name or "\\" in name or not plain_file:
        raise ShardError(f"shard {path} has an unsafe member {name!r} (absolute path, '..', folder or link): "
                         f"rejected; {REPAIR}")
    if not key.isdigit() or not field:
        raise ShardError(f"shard {path} has a member {name!r} that is not ID.FIELD (e.g. 00000042.image.png): "
                         f"{REPAIR}")
    return int(key), field


BLOCK = 512
_ZEROS = bytes(BLOCK)


def _tar_members(data: bytes, verified: bool):
    """(name, is a plain file, bytes) of each member of a ustar archive held in memory, header checksums checked
    unless the whole file's sha256 was (`verified`); ValueError where the archive is corrupt or cut short. The
    few header fields a shard uses, read directly: 5-6x faster than tarfile, whose objects cost ~60 us a sample."""
    pos = 0
    while True:
        header = data[pos : pos + BLOCK]
        if len(header) < BLOCK:
            break
        if header == _ZEROS:  # the end-of-archive marker: two zero blocks, then only zeros
            if len(data) - pos < 2 * BLOCK or data[pos:].strip(b"\0"):
                break
            return
        if not verified and _checksum(header) != sum(header) - sum(header[148:156]) + 8 * 32:
            raise ValueError(f"bad tar header checksum at byte {pos}")
        size = int(header[124:136].strip(b" \0") or b"0", 8)
        prefix = header[345:500].partition(b"\0")[0]  # ustar: a long name's folders; a shard's names have none
        name = (prefix + b"/" if prefix else b"") + header[:100].partition(b"\0")[0]
        pos += BLOCK
        if pos + size > len(data):
            break
        if header[156:157] in (b"x", b"g", b"L", b"K"):  # pax or GNU long-name headers: not a shard prepare wrote
            raise ValueError(f"a pax/GNU extended header at byte {pos - BLOCK}: only the plain ustar members "
                             f"`sslscale data prepare` writes are read")
        yield name.decode("utf-8", "replace"), header[156:157] in (b"0", b"\0"), data[pos : pos + size]
        pos += -(-size // BLOCK) * BLOCK
    raise ValueError("no end-of-archive marker after the last member: the file was cut short")


def _checksum(header: bytes) -> int:
    """The checksum a tar header states (the sum of its bytes, the checksum field counted as spaces)."""
    return int(header[148:156].strip(b" \0") or b"-1", 8)


def _tar_rows(data: bytes, path: str, labelled: bool, verified: bool, member: str) -> list[Row]:
    files: dict[int, dict[str, bytes]] = {}
    for name, plain_file, content in _tar_members(data, verified):
        sid, field = _member_key(name, plain_file, path)
        files.setdefault(sid, {})[field] = content
    return [(sid, f[member], int(f["label.cls"]) if labelled else None) for sid, f in files.items()]


def _parquet_rows(data: bytes, labelled: bool, column: str) -> list[Row]:
    table = pq.read_table(io.BytesIO(data), columns=["id", column] + (["label"] if labelled else []))
    cols = table.to_pydict()
    return list(zip(cols["id"], cols[column], cols.get("label", [None] * table.num_rows)))
