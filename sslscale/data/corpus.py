"""Corpus preparation and reading: sources -> deterministic shards + manifest.json, and back.

Writer: `prepare` turns a source (Fashion-MNIST IDX files, scikit-learn's digits, a folder of images, or text:
a folder of .txt/.md/.jsonl files or the built-in `pydocs`, see sources/text.py; a folder with class subfolders gets a
seeded, stratified test split) into WebDataset tar shards (`{split}-{index:06d}.tar` holding `{id:08d}.image.png`
or `{id:08d}.text.ids`, a member per data field of a record, and `{id:08d}.label.cls`) or Parquet shards
(`{split}-{index:06d}.parquet`, columns id, one per data field (image, text) and label), plus a manifest.json
with counts, each field's kind, dtype and shape or length, and sha256 checksums: per shard, `sha256` of the whole
file, and `chunks`, the sha256 of each consecutive `chunk_bytes` of it (shards.CHUNK_BYTES, 8 MiB, unless prepare
is given another; the last chunk may be short), so a reader can check a tar shard as it streams it (shards.py). The corpus is built in `OUT.partial` and renamed
into place with the manifest written last, so an interrupted run never leaves a complete-looking OUT; the same
input gives byte-identical shards.

Reader: `load_manifest`, `shard_paths`, `verify_shards` and `read_split` (a whole
split in memory, decoded by its declared data field (modalities), for transfer evaluation on small labelled sets
and for tests); one shard is read by shards.read_shard, which checks its sha256 (chunk by chunk where the
manifest lists chunks) and member names.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sslscale import storage
from sslscale.data import sources
from sslscale.data.modalities import Modality, data_field, data_fields, labelled
from sslscale.data.shards import CHUNK_BYTES, Members, Row, checks, read_shard
from sslscale.data.sources import Sample, Source
from sslscale.errors import SslscaleError, reason

FORMATS = {"webdataset": ".tar", "parquet": ".parquet"}
MANIFEST = "manifest.json"


def builtin_sources() -> tuple[str, ...]:
    """Source names that are not folders (sources.py: every kind's built-ins)."""
    return sources.builtin_sources()


# ---------------------------------------------------------------- writer

def prepare(source: str, out, *, fmt: str = "webdataset", shard_size: int = 5000, on_error: str = "fail",
            overwrite: bool = False, progress: bool = True, test_fraction: float = 0.2, seed: int = 0,
            chunk_bytes: int = CHUNK_BYTES, **options) -> dict:
    """Write SOURCE as shards + manifest.json into OUT (atomically) and return the manifest. A folder in class
    subfolders holds out `test_fraction` of each class (seeded by `seed`) as its test split. Each shard's entry
    holds the sha256 of every `chunk_bytes` of it. The source's kind takes its own `options` (sources.py: images
    path and image_size, text seq_len, vocab_size and tokenizer; None: its default)."""
    _check_options(fmt, shard_size, on_error, test_fraction, chunk_bytes)
    out = Path(out).absolute()
    _check_out(out, overwrite)
    src = sources.open_source(source, on_error=on_error, test_fraction=test_fraction, seed=seed, **options)
    partial = out.with_name(out.name + ".partial")
    _remove(partial)
    partial.mkdir(parents=True)
    try:
        manifest = _build(src, partial, fmt, shard_size, progress, chunk_bytes)
        _publish(partial, out, overwrite)
    except BaseException:
        _remove(partial)
        raise
    return manifest


def _check_options(fmt: str, shard_size: int, on_error: str, test_fraction: float, chunk_bytes: int) -> None:
    if fmt not in FORMATS:
        raise SslscaleError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if on_error not in ("fail", "skip"):
        raise SslscaleError(f"unknown on_error {on_error!r}: use fail or skip")
    if shard_size < 1 or chunk_bytes < 1:
        raise SslscaleError(f"shard size ({shard_size}) and chunk size ({chunk_bytes}) must be positive")
    if not 0 <= test_fraction < 1:
        raise SslscaleError(f"test fraction {test_fraction} is outside [0, 1): hold out e.g. 0.2 of each class "
                            "(0: no test split)")


def _check_out(out: Path, overwrite: bool) -> None:
    if (out / MANIFEST).is_file():
        if not overwrite:
            raise SslscaleError(f"{out} already holds a prepared corpus: pass --overwrite to replace it")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SslscaleError(f"{out} exists and is neither empty nor a prepared corpus: "
                            "choose another --out or empty it yourself")


def _publish(partial: Path, out: Path, overwrite: bool) -> None:
    _check_out(out, overwrite)  # again: another run may have finished meanwhile
    if not (out / MANIFEST).is_file():
        partial.rename(out)  # replaces an empty folder, if any
        return
    old = out.with_name(out.name + ".old")
    _remove(old)
    out.rename(old)
    partial.rename(out)
    shutil.rmtree(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _build(src: Source, staging: Path, fmt: str, shard_size: int, show_progress: bool, chunk_bytes: int) -> dict:
    progress = Progress(sum(n for n, _ in src.splits.values()), show_progress)
    fields = list(data_fields({"fields": src.data}, src.path).values())  # each field's kind encodes its values
    splits = {split: _write_split(samples, split, staging, fmt, shard_size, progress, fields, chunk_bytes)
              for split, (_, samples) in src.splits.items()}
    progress.report()
    if not any(s["samples"] for s in splits.values()):
        raise SslscaleError(f"no {next(iter(src.data))} under {src.path} could be decoded ({len(src.skipped)} "
                            "skipped): fix or remove them")
    entries: dict = dict(src.data)
    if src.classes is not None:
        entries["label"] = {"kind": "label", "classes": src.classes,
                            **({"words": src.class_words} if src.class_words else {})}
    for file_name, data in src.files.items():
        (staging / file_name).write_bytes(data)
    manifest = {"version": 1, "format": fmt, "source": {"kind": src.kind, "path": src.path},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "fields": entries, "splits": splits, "skipped": src.skipped}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_split(samples: Iterable[Sample], split: str, staging: Path, fmt: str, shard_size: int,
                 progress: "Progress", fields: list[Modality], chunk_bytes: int) -> dict:
    """A split's shards: each sample's values encoded by their fields, `shard_size` samples a shard."""
    shards: list[dict] = []
    batch: list[Row] = []
    members = tuple(f.member for f in fields)
    for sample_id, (values, label) in enumerate(samples):
        batch.append((sample_id, tuple(f.encode(v) for f, v in zip(fields, values, strict=True)), label))
        progress.advance()
        if len(batch) == shard_size:
            shards.append(_write_shard(staging, split, len(shards), fmt, batch, members, chunk_bytes))
            batch = []
    if batch:
        shards.append(_write_shard(staging, split, len(shards), fmt, batch, members, chunk_bytes))
    return {"samples": sum(s["samples"] for s in shards), "shards": shards}


def _write_shard(staging: Path, split: str, index: int, fmt: str, rows: list[Row], members: Members,
                 chunk_bytes: int) -> dict:
    name = f"{split}-{index:06d}{FORMATS[fmt]}"
    (_write_tar if fmt == "webdataset" else _write_parquet)(staging / name, rows, members)
    # chunks for parquet shards too (read whole today): the manifest describes every shard's bytes the same way
    sha256, chunks = storage.sha256_chunks(str(staging / name), chunk_bytes)
    return {"name": name, "samples": len(rows), "first_id": rows[0][0], "sha256": sha256,
            "chunk_bytes": chunk_bytes, "chunks": chunks}


def _write_tar(path: Path, rows: list[Row], members: Members) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample_id, values, label in rows:
            for member, data in zip(members, values):
                _add_member(tar, f"{sample_id:08d}.{member}", data)
            if label is not None:
                _add_member(tar, f"{sample_id:08d}.label.cls", str(label).encode())


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # fixed metadata so shards are byte-identical across runs
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def _write_parquet(path: Path, rows: list[Row], members: Members) -> None:
    columns = {"id": pa.array([r[0] for r in rows], pa.int64()),
               **{m.partition(".")[0]: pa.array([r[1][i] for r in rows], pa.binary()) for i, m in enumerate(members)}}
    if rows[0][2] is not None:
        columns["label"] = pa.array([r[2] for r in rows], pa.int64())
    pq.write_table(pa.table(columns), path)


class Progress:
    """Samples done, rate and ETA on stderr: redrawn with '\\r' on a TTY, else a line every ~5 s; `what` names the
    work (prepare, embed)."""

    def __init__(self, total: int, enabled: bool, what: str = "prepare"):
        self.total, self.enabled, self.done, self.what = total, enabled, 0, what
        self.tty = enabled and sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.enabled and time.monotonic() - self.last >= (0.2 if self.tty else 5.0):
            self.report(final=False)

    def report(self, final: bool = True) -> None:
        if not self.enabled:
            return
        self.last = time.monotonic()
        rate = self.done / max(self.last - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate else 0.0
        line = f"{self.what}: {self.done}/{self.total} samples, {rate:,.0f} samples/s, ETA {eta:.0f}s"
        sys.stderr.write(("\r" if self.tty else "") + line + ("\n" if final or not self.tty else ""))
        sys.stderr.flush()


# ---------------------------------------------------------------- reader

def load_manifest(corpus_dir) -> dict:
    """The manifest of a prepared corpus, or SslscaleError saying how to prepare one."""
    path = storage.join(str(corpus_dir), MANIFEST)
    redo = f"re-run `sslscale data prepare SOURCE --out {corpus_dir} --overwrite`"
    if not storage.isfile(path):
        raise SslscaleError(f"no manifest.json in {corpus_dir}: prepare it with "
                            f"`sslscale data prepare SOURCE --out {corpus_dir}` (or copy a prepared one there)")
    try:
        manifest = json.loads(storage.read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SslscaleError(f"{path} is not valid JSON ({reason(e)}): {redo}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != 1 or "splits" not in manifest:
        raise SslscaleError(f"{path} is not a version-1 sslscale manifest: {redo}")
    return manifest


def tokenizer_bytes(corpus_dir) -> bytes | None:
    """The tokenizer.json a prepared corpus's text field names (what its token ids mean), or None: no text field."""
    manifest = load_manifest(corpus_dir)
    names = [e["tokenizer"] for e in manifest["fields"].values() if e.get("kind") == "text" and e.get("tokenizer")]
    return storage.read_bytes(storage.join(str(corpus_dir), names[0])) if names else None


def _split_entry(manifest: dict, split: str, where) -> dict:
    if split not in manifest["splits"]:
        raise SslscaleError(f"corpus {where} has no split {split!r} "
                            f"(it has: {', '.join(manifest['splits'])}): pick one of those")
    return manifest["splits"][split]


def shard_paths(manifest_or_dir, corpus_dir=None, split: str = "train") -> list[str]:
    """Absolute shard paths of SPLIT; corpus_dir defaults to manifest_or_dir when that is a folder."""
    manifest = manifest_or_dir if isinstance(manifest_or_dir, dict) else load_manifest(manifest_or_dir)
    root = storage.absolute(str(manifest_or_dir if corpus_dir is None else corpus_dir))
    return [storage.join(root, shard["name"]) for shard in _split_entry(manifest, split, root)["shards"]]


def verify_shards(corpus_dir, split: str, hashes: bool = True) -> None:
    """Check every shard of SPLIT exists and (with `hashes`) matches its sha256 in the manifest."""
    manifest = load_manifest(corpus_dir)
    redo = f"re-run `sslscale data prepare SOURCE --out {corpus_dir} --overwrite`"
    for shard in _split_entry(manifest, split, corpus_dir)["shards"]:
        path = storage.join(str(corpus_dir), shard["name"])
        if not storage.isfile(path):
            raise SslscaleError(f"shard {path} is missing: {redo}")
        if hashes and storage.sha256(path) != shard["sha256"]:
            raise SslscaleError(f"shard {path} does not match its sha256 in manifest.json: {redo}")


def read_split(corpus_dir, split: str, with_labels: bool = True, kind: str | None = None):
    """(ids int64[N], data, labels int64[N] or None) of SPLIT, in id order, every shard checked against its sha256
    or its chunks' (shards.read_shard); data: the data field of `kind` (None: the corpus's one data field), images
    uint8[N,H,W,C], or for text token ids int64[N, max_length] padded with 0."""
    manifest = load_manifest(corpus_dir)
    with_labels = with_labels and labelled(manifest)
    member = data_field(manifest, corpus_dir, kind).member
    rows: list[Row] = []
    for shard in _split_entry(manifest, split, corpus_dir)["shards"]:
        rows.extend(read_shard(str(Path(corpus_dir) / shard["name"]), manifest["format"], **checks(shard),
                               labelled=with_labels, members=(member,)))
    rows.sort(key=lambda r: r[0])
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    labels = np.array([r[2] for r in rows], dtype=np.int64) if with_labels else None
    return ids, decode_rows(rows, manifest, kind), labels


def decode_rows(rows: list[Row], manifest: dict, kind: str | None = None) -> np.ndarray:
    """The rows' data (each row read with one member), decoded and stacked by the corpus's data field of `kind`
    (modalities; None: its one data field): images uint8 (N, H, W, C), token ids int64 (N, max_length) padded
    with 0."""
    field = data_field(manifest, kind=kind)
    return field.stack([field.decode(r[1][0]) for r in rows])


def data_root() -> str:
    """Where built-in corpora live: $SSLSCALE_DATA, default ./data."""
    return str(Path(os.environ.get("SSLSCALE_DATA", "data")).absolute())


def resolve(name_or_dir: str, prepare_missing: bool = True) -> str:
    """A prepared corpus folder from a built-in name (prepared under data_root() on first use) or a folder."""
    if name_or_dir in builtin_sources():
        folder = str(Path(data_root()) / name_or_dir)
        if prepare_missing and not (Path(folder) / MANIFEST).is_file():
            prepare(name_or_dir, folder)
        return folder
    if not storage.isdir(name_or_dir):
        raise SslscaleError(f"corpus {name_or_dir!r} is neither a built-in name ({', '.join(builtin_sources())}) "
                            f"nor a folder: prepare one with `sslscale data prepare SOURCE --out DIR`")
    return storage.absolute(name_or_dir)
