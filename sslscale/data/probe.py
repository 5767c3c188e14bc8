"""The fixed probe set: training images (or passages) chosen once per run by its seed, on which the embedding
spectrum (health.spectrum) is measured every train.health_every steps, so that successive points compare the same
samples.

`probe_images(corpus_dir, split, seed, n)` reads as few shards as possible: the split's shards are taken in a seeded
order until they hold n samples (one shard of a default-sized corpus holds 5,000), then n of their samples are drawn
with the same generator. The same arguments give the same images, in id order, on every call and every machine: a
resumed run measures the same set. Reading goes through corpus.py (the manifest, shard paths, decoding) and
shards.read_shard (each shard checked against its sha256, or its chunks'); labels are never read.
"""
from __future__ import annotations

import numpy as np

from sslscale.data import corpus
from sslscale.data.modalities import data_field
from sslscale.data.shards import Row, checks, read_shard
from sslscale.errors import SslscaleError

SALT = 0x9B0BE  # keeps the probe's random stream apart from other users of data.seed


def _rows(corpus_dir: str, split: str, rng: np.random.Generator, n: int, kind: str | None) -> list[Row]:
    """The rows of the fewest shards, in a seeded order, that hold at least n samples (all when fewer), by id."""
    manifest = corpus.load_manifest(corpus_dir)
    paths = corpus.shard_paths(manifest, corpus_dir, split)  # one line naming a missing split
    entries = manifest["splits"][split]["shards"]
    member = data_field(manifest, corpus_dir, kind).member
    rows: list[Row] = []
    for i in rng.permutation(len(entries)):
        if len(rows) >= n:
            break
        rows += read_shard(paths[i], manifest["format"], **checks(entries[i]), members=(member,))
    return sorted(rows, key=lambda r: r[0])


def probe_images(corpus_dir: str, split: str, seed: int, n: int, kind: str | None = None) -> np.ndarray:
    """n images (all of the split's when it holds fewer) of SPLIT, chosen by `seed`, as uint8 (n, H, W, C) in id
    order (a text corpus: token ids (n, L), corpus.decode_rows); the same set on every call with the same
    arguments. `kind`: the data field read (None: the corpus's one data field)."""
    rng = np.random.default_rng([SALT, seed % 2**63])
    rows = _rows(corpus_dir, split, rng, n, kind)
    if not rows:
        raise SslscaleError(f"split {split!r} of corpus {corpus_dir} holds no samples: prepare it again from a "
                            f"source with images")
    chosen = np.sort(rng.choice(len(rows), size=min(n, len(rows)), replace=False))
    return corpus.decode_rows([rows[j] for j in chosen], corpus.load_manifest(corpus_dir), kind)
