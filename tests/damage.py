"""Test helper: damage a prepared corpus the ways real corpora break (truncated copy, an undecodable image)."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from sslscale import storage
from sslscale.data import corpus


def copy_corpus(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def truncate(shard: Path) -> None:
    """Keep the first half of the file, as an interrupted copy does."""
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])


def rewrite_tar(shard: Path, replace: dict[str, bytes], update_manifest: bool = True) -> None:
    """Rewrite a tar shard with some members' bytes replaced (names as given); optionally re-hash it in the
    manifest (its sha256 and its chunks', as prepare does), so only the content is bad, not the checksums."""
    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            members.append((m.name, replace.get(m.name, tar.extractfile(m).read())))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())
    if update_manifest:
        path = shard.parent / corpus.MANIFEST
        manifest = json.loads(path.read_text())
        for split in manifest["splits"].values():
            for entry in split["shards"]:
                if entry["name"] == shard.name:
                    entry["sha256"], chunks = storage.sha256_chunks(str(shard), entry.get("chunk_bytes", 1 << 20))
                    if "chunks" in entry:  # an older manifest has none
                        entry["chunks"] = chunks
        path.write_text(json.dumps(manifest))
