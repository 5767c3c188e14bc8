"""Reading one prepared shard safely: its bytes are checked against the manifest's sha256 values as they are read,
tar member names are validated, and every failure is one line that names the shard.

A tar shard whose manifest entry lists `chunks` (the sha256 of each consecutive `chunk_bytes` of the file, the
last chunk maybe short; corpus.prepare records them, CHUNK_BYTES by default) is streamed: read one chunk at a time,
each chunk checked before any sample with bytes in it is handed out, and the tar parsed member by member as the
chunks arrive, so a reader holds about one chunk plus one sample, not the whole shard (~0.5 GB at ImageNet sizes).
A shard of an older manifest (no `chunks`), and every Parquet shard (a Parquet reader needs random access to the
file's footer), is read whole into memory and checked against the whole file's `sha256` before it is parsed.

A shard is a WebDataset tar of `{id:08d}.image.png` (or another data member, such as text's `text.ids`; a record
of several data fields has a member each) / `{id:08d}.label.cls` members, a sample's members next to each other,
or a parquet table with `id`, a column per data field (`image`, `text`) and `label`. A reader names the data
`members` it wants, and each row holds their bytes in that order. Tar members with an absolute path, `..`, a
folder or a non-file type are rejected: nothing in a shard can name a place outside it. `iter_shard` hands rows
out as they are checked (the training stream, stream.py, per epoch and shard on Ray Data tasks); `read_shard`
returns all of a shard's rows or none (`corpus.read_split` for transfer evaluation, the probe set).
"""
from __future__ import annotations

import hashlib
import io
from itertools import chain
from typing import Iterable, Iterator, NoReturn, Optional, Sequence

import pyarrow.parquet as pq

from sslscale import storage
from sslscale.errors import SslscaleError

# (sample id, the bytes of each data member asked for (an image, token ids; a picture and its caption), label or None)
Row = tuple[int, tuple[bytes, ...], Optional[int]]
Members = tuple[str, ...]  # the data members a reader asks for, as modalities.Modality.member names them
REPAIR = "re-run `sslscale data prepare` for this corpus (or set data.on_error=skip to train without it)"
# the unit a shard is checked and streamed in: few reads per shard (one ranged GET each on S3), little to hold
CHUNK_BYTES = 8 << 20
MISMATCH = "its sha256 no longer matches manifest.json"


class ShardError(SslscaleError):
    """A shard that cannot be used: missing, modified, truncated or unsafe."""


class _Mismatch(Exception):
    """A chunk whose bytes are not the ones prepared (caught inside this module, turned into a ShardError)."""


def checks(entry: dict) -> dict:
    """read_shard's checks for a manifest's shard entry: its sha256 and, where prepare recorded them, its chunks'."""
    return {"sha256": entry["sha256"], "chunks": entry.get("chunks", ()), "chunk_bytes": entry.get("chunk_bytes", 0)}


def read_shard(path: str, fmt: str, *, sha256: str = "", chunks: Sequence[str] = (), chunk_bytes: int = 0,
               labelled: bool = False,
               members: Members = ("image.png",)) -> list[Row]:
    """All rows of one shard (the bytes of its data `members`, modalities.Modality.member's), or ShardError naming the
    shard when it cannot be trusted or read: no rows of a shard that is bad anywhere. Checks as iter_shard's."""
    return list(iter_shard(path, fmt, sha256=sha256, chunks=chunks, chunk_bytes=chunk_bytes, labelled=labelled,
                           members=members))


def iter_shard(path: str, fmt: str, *, sha256: str = "", chunks: Sequence[str] = (), chunk_bytes: int = 0,
               labelled: bool = False,
               members: Members = ("image.png",)) -> Iterator[Row]:
    """The rows of one shard as they are checked: a tar shard with `chunks` streamed, each row once every chunk its
    bytes lie in matched; otherwise all rows once the whole file matched `sha256` (none given: not checked).
    ShardError naming the shard when it cannot be trusted or read, after the rows handed out before the damage."""
    if chunks and chunk_bytes > 0 and fmt == "webdataset":
        yield from _streamed(path, chunks, chunk_bytes, labelled, members)
        return
    try:
        data = storage.read_bytes(path)  # a local, shared or object-store path
    except OSError as e:
        raise _unreadable(path, e) from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        _refuse(path, [data], fmt, labelled, members, MISMATCH)
    yield from list(_rows([data], path, fmt, labelled, bool(sha256), members))  # parsed whole: all rows or none


def _streamed(path: str, chunks: Sequence[str], chunk_bytes: int, labelled: bool, members: Members) -> Iterator[Row]:
    try:
        yield from _rows(_checked(_read(path, chunk_bytes), chunks, chunk_bytes), path, "webdataset", labelled, True,
                         members)
    except _Mismatch as e:  # the chunks read are gone: read the file again, unchecked, to say what is wrong with it
        _refuse(path, _read(path, chunk_bytes), "webdataset", labelled, members, str(e))


def _read(path: str, chunk_bytes: int) -> Iterator[bytes]:
    try:
        yield from storage.read_chunks(path, chunk_bytes)
    except OSError as e:
        raise _unreadable(path, e) from None


def _unreadable(path: str, e: OSError) -> ShardError:
    return ShardError(f"shard {path} cannot be read ({e.strerror or str(e).strip()[:200]}): {REPAIR}")


def _checked(source: Iterator[bytes], chunks: Sequence[str], chunk_bytes: int) -> Iterator[bytes]:
    """The chunks read from `source`, each handed on only once its sha256 matched the manifest's; _Mismatch at the
    first that does not, and where the file is longer than the chunks listed."""
    for i, expected in enumerate(chunks):
        if hashlib.sha256(data := next(source, b"")).hexdigest() != expected:
            raise _Mismatch(f"the sha256 of its chunk {i + 1} of {len(chunks)}, from byte {i * chunk_bytes}, no "
                            f"longer matches manifest.json")
        yield data
    if next(source, b""):
        raise _Mismatch(f"it is longer than the {len(chunks)} chunks of {chunk_bytes} bytes manifest.json lists")


def _refuse(path: str, data: Iterable[bytes], fmt: str, labelled: bool, members: Members, why: str) -> NoReturn:
    """The ShardError of a shard whose bytes differ from the prepared ones: truncated or corrupt where its bytes
    (read again, unchecked) no longer parse, else modified after it was prepared."""
    try:
        for _ in _rows(data, path, fmt, labelled, False, members):
            pass
    except ShardError as e:
        raise ShardError(f"{e} ({MISMATCH})") from None
    raise ShardError(f"shard {path} was modified after it was prepared ({why}): {REPAIR}")


def _rows(data: Iterable[bytes], path: str, fmt: str, labelled: bool, verified: bool,
          members: Members) -> Iterator[Row]:
    """The rows of a shard's bytes, given as consecutive chunks (one, for a shard read whole)."""
    try:
        if fmt == "webdataset":
            yield from _tar_rows(data, path, labelled, verified, members)
        else:
            yield from _parquet_rows(b"".join(data), labelled, [m.partition(".")[0] for m in members])
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


class _Cursor:
    """Consecutive reads from an iterator of byte chunks, holding one chunk and the bytes a read asks for."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks, self._chunk, self._at, self.offset = iter(chunks), b"", 0, 0

    def read(self, n: int) -> bytes:
        """The next n bytes, fewer only at the end."""
        if self._at + n <= len(self._chunk):  # most reads: inside the chunk at hand
            self._at += n
            self.offset += n
            return self._chunk[self._at - n : self._at]
        parts, need = [], n
        while need:
            if self._at == len(self._chunk):
                self._chunk, self._at = b"", 0  # let the spent chunk go before the next one is read
                self._chunk = next(self._chunks, b"")
                if not self._chunk:
                    break
            parts.append(self._chunk[self._at : self._at + need])
            self._at += len(parts[-1])
            need -= len(parts[-1])
        self.offset += n - need
        return b"".join(parts)

    def rest_is_zeros(self) -> bool:
        """Whether every byte left is zero; reads to the end when so (a checked stream checks every chunk)."""
        rest = chain([self._chunk[self._at :]], self._chunks)
        self._chunk, self._at = b"", 0
        return not any(chunk.strip(b"\0") for chunk in rest)


def _tar_members(data: Iterable[bytes], verified: bool):
    """(name, is a plain file, bytes) of each member of a ustar archive given as consecutive chunks of its bytes
    (a whole file: one chunk), header checksums checked unless the bytes were (`verified`); ValueError where the
    archive is corrupt or cut short. Holds one chunk and one member at a time. The few header fields a shard uses,
    read directly: 5-6x faster than tarfile, whose objects cost ~60 us a sample."""
    stream = _Cursor(data)
    while len(header := stream.read(BLOCK)) == BLOCK:
        if header == _ZEROS:  # the end-of-archive marker: two zero blocks, then only zeros
            if stream.read(BLOCK) != _ZEROS or not stream.rest_is_zeros():
                break
            return
        if not verified and _checksum(header) != sum(header) - sum(header[148:156]) + 8 * 32:
            raise ValueError(f"bad tar header checksum at byte {stream.offset - BLOCK}")
        if header[156:157] in (b"x", b"g", b"L", b"K"):  # pax or GNU long-name headers: not a shard prepare wrote
            raise ValueError(f"a pax/GNU extended header at byte {stream.offset - BLOCK}: only the plain ustar "
                             f"members `sslscale data prepare` writes are read")
        size = int(header[124:136].strip(b" \0") or b"0", 8)
        prefix = header[345:500].partition(b"\0")[0]  # ustar: a long name's folders; a shard's names have none
        name = (prefix + b"/" if prefix else b"") + header[:100].partition(b"\0")[0]
        content = stream.read(size)
        if len(content) < size:
            break
        yield name.decode("utf-8", "replace"), header[156:157] in (b"0", b"\0"), content
        stream.read(-size % BLOCK)  # the padding to the next header
    raise ValueError("no end-of-archive marker after the last member: the file was cut short")


def _checksum(header: bytes) -> int:
    """The checksum a tar header states (the sum of its bytes, the checksum field counted as spaces)."""
    return int(header[148:156].strip(b" \0") or b"-1", 8)


def _tar_rows(data: Iterable[bytes], path: str, labelled: bool, verified: bool, members: Members) -> Iterator[Row]:
    """Each sample's row once the member after its last one was read (or the archive's end, all of it checked)."""
    sid, fields, done = -1, {}, set()
    for name, plain_file, content in _tar_members(data, verified):
        key, field = _member_key(name, plain_file, path)
        if key != sid:
            if fields:
                yield _row(sid, fields, labelled, members)
                done.add(sid)
            if key in done:  # a row is handed out when the next sample starts: its members must be together
                raise ValueError(f"sample {key}'s members are not next to each other")
            sid, fields = key, {}
        fields[field] = content
    if fields:
        yield _row(sid, fields, labelled, members)


def _row(sid: int, fields: dict[str, bytes], labelled: bool, members: Members) -> Row:
    return sid, tuple(fields[m] for m in members), int(fields["label.cls"]) if labelled else None


def _parquet_rows(data: bytes, labelled: bool, columns: list[str]) -> list[Row]:
    table = pq.read_table(io.BytesIO(data), columns=["id", *columns] + (["label"] if labelled else []))
    cols = table.to_pydict()
    return list(zip(cols["id"], zip(*(cols[c] for c in columns)), cols.get("label", [None] * table.num_rows)))
