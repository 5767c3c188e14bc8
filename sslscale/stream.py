"""Ray Data pipeline: prepared shards -> decoded images -> augmented views, on Ray Data CPU tasks.

The dataset for a run is one pass per epoch, unioned: each epoch reads the shards in a seeded random block order
and builds views with randomness fixed by (seed, epoch, sample id). Rows carry `id` and `epoch`, so a worker can
record what its completed steps consumed; on resume, the ids already consumed in an epoch are dropped before
decoding (exact resume at sample granularity). Ray Train splits the dataset across workers (streaming_split,
equal=True); no worker ever loads the whole corpus. Labels are never read here.
"""
from __future__ import annotations

import math

import numpy as np
import ray.data

from sslscale import corpus
from sslscale.errors import SslscaleError
from sslscale.views import ViewSpec, batch_views


def view_spec(cfg, size: int) -> ViewSpec:
    d = cfg.data
    return ViewSpec(size=size, crop_min_scale=d.crop_min_scale, flip=d.flip, jitter=d.jitter,
                    jitter_prob=d.jitter_prob, grayscale=d.grayscale, blur=d.blur)


def _decode(data: bytes, channels: int) -> np.ndarray | None:
    try:
        img = corpus.decode_image(data)
    except SslscaleError:
        return None
    return img if img.shape[2] == channels else None


def make_views(batch: dict, *, epoch: int, seed: int, spec: ViewSpec, channels: int, skip_ids: np.ndarray,
               on_error: str) -> dict:
    """Ray Data UDF: raw rows (`__key__`/`id`, PNG bytes) -> {"id", "epoch", "view_0", "view_1"}."""
    ids = np.asarray([int(k) for k in batch["__key__"]] if "__key__" in batch else batch["id"], dtype=np.int64)
    data = batch["image.png"] if "image.png" in batch else batch["image"]
    keep = ~np.isin(ids, skip_ids)
    images, kept = [], []
    for sid, raw in zip(ids[keep], np.asarray(data, dtype=object)[keep]):
        img = _decode(raw, channels)
        if img is None:
            if on_error == "fail":
                raise SslscaleError(f"sample {sid} cannot be decoded as a {channels}-channel image; "
                                    f"re-prepare the corpus or set data.on_error=skip")
            continue
        images.append(img)
        kept.append(sid)
    kept_ids = np.asarray(kept, dtype=np.int64)
    stacked = np.stack(images) if images else np.empty((0, 1, 1, channels), np.uint8)  # all skipped: empty views
    views = batch_views(stacked, kept_ids, seed=seed, epoch=epoch, spec=spec)
    return {"id": kept_ids, "epoch": np.full(len(kept_ids), epoch, np.int64), **views}


def epochs_needed(steps: int, batch_size: int, samples: int) -> int:
    """Epochs that cover `steps` global batches (one more for the rows equal splitting drops)."""
    return math.ceil(steps * batch_size / samples) + 1


def pretrain_dataset(cfg, corpus_dir: str, *, consumed: dict | None = None) -> ray.data.Dataset:
    """The run's view stream, epoch after epoch; `consumed` {epoch: ids} drops what a checkpoint already used
    (a fully consumed epoch then yields nothing)."""
    manifest = corpus.load_manifest(corpus_dir)
    paths = corpus.shard_paths(manifest, corpus_dir, cfg.data.split)  # one-line error for a missing split
    split = manifest["splits"][cfg.data.split]
    h, w, c = manifest["fields"]["image"]["shape"]
    if manifest["format"] == "parquet":
        base = ray.data.read_parquet(paths, columns=["id", "image"])
    else:
        base = ray.data.read_webdataset(paths, decoder=None, suffixes=["image.png"])
    consumed = consumed or {}
    n_epochs = epochs_needed(cfg.train.steps, cfg.data.batch_size, split["samples"])
    parts = []
    for epoch in range(n_epochs):
        kwargs = dict(epoch=epoch, seed=cfg.data.seed, spec=view_spec(cfg, h), channels=c,
                      skip_ids=np.asarray(consumed.get(epoch, []), np.int64), on_error=cfg.data.on_error)
        parts.append(base.randomize_block_order(seed=cfg.data.seed + epoch)
                     .map_batches(make_views, fn_kwargs=kwargs, batch_size=256, batch_format="numpy"))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def quiet() -> None:
    """No per-operator progress bars: training prints its own progress line."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def ingest_options(cfg) -> ray.data.ExecutionOptions:
    """Bound what the view pipeline may use, so it runs just ahead of training instead of competing with it
    for the same cores: `data.cpus` CPUs and `data.buffer_mb` of object store for views not yet consumed.
    Order is not preserved (with preserve_order and a bounded buffer the split coordinator stalled on a 60k
    corpus): the union may interleave epochs, which the per-epoch skip lists in the checkpoint account for."""
    limits = ray.data.ExecutionResources(cpu=cfg.data.cpus, object_store_memory=cfg.data.buffer_mb * 2**20)
    return ray.data.ExecutionOptions(resource_limits=limits)
