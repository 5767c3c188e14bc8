"""Ray Data pipeline: prepared shards -> decoded samples -> augmented views, on Ray Data CPU tasks.

The run's stream is a plan of (epoch, shard) items, epochs in order and shards in a seeded order per epoch, less
the shards a checkpoint consumed whole (manifest: a shard holds ids first_id..first_id+samples-1); a Ray Data task
reads one item (shards.iter_shard: a tar shard streamed chunk by chunk, each chunk's sha256 checked before its
samples are used, so a task holds about a chunk and a block, not the shard; member names checked), drops the ids a
checkpoint already consumed in that epoch (a position.Position), decodes and builds views (each `Part`: a data
field the method reads, a modalities.Modality, with the method's typed layout for it: images through
views.batch_views, passages through modalities.text.text_views, vectorised per block; a record of several fields
makes each field's views) with randomness fixed by (seed, epoch, sample id), and hands them out in blocks of
BLOCK_ROWS as it makes them: one operator, no raw bytes through the object store. It runs at most
`ingest_options`' budget ahead of training, and Ray Data's scheduling loop is paced so that waiting for training
costs no CPU (_pace_scheduling). Rows carry `id` and `epoch`, so a worker records what its completed steps
consumed and a resume continues each epoch with exactly the samples it has not seen. Epochs overlap only by the
few items in flight at once. Ray Train splits the stream across workers (streaming_split, equal=True); no worker
ever loads the whole corpus. Labels are never read here. With data.on_error=skip, a shard or sample that cannot
be used is left out (a shard found bad part-way: from the damage on) and recorded in the run's skip folder (see
`skipped`); with fail, the run stops with one line naming it.
"""
from __future__ import annotations

import math
import os
import time
import uuid
from itertools import islice
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import ray.data

from sslscale import storage
from sslscale.data import corpus
from sslscale.data.modalities import Layout, Modality, data_field, data_fields
from sslscale.data.position import Position
from sslscale.data.shards import Members, Row, ShardError, iter_shard
from sslscale.errors import SslscaleError


BLOCK_ROWS = 256  # views per block handed to a training worker
# seconds between rounds of Ray Data's scheduling loop (see _pace_scheduling); 0 leaves Ray's loop as it is
LOOP_PERIOD_S = float(os.environ.get("SSLSCALE_DATA_LOOP_PERIOD_S", "0.02"))


def _pace_scheduling() -> None:
    """Ray Data 2.60's scheduling loop (StreamingExecutor) goes round without pause while the stream waits for
    training to take its blocks, the usual state of a stream that runs ahead: its tasks' outputs are ready (so its
    wait returns at once) but held back (the object-store budget is full). That kept the SplitCoordinator actor at
    ~0.5 CPU, a quarter of these 2 cores, taken from training (py-spy: the loop's resource bookkeeping); paced, it
    uses ~0.1. Each round of an executor starts at least LOOP_PERIOD_S after its previous one: Ray's own wait for
    tasks allows 0.1 s, and one round reads every ready output and starts every task it can. Installed when this
    module is imported, in every process that imports it: the SplitCoordinator does when it unpickles the stream's
    functions (shard_views), and so does a driver (its own Ray Data pipelines are paced too). A Ray without that
    function is left alone; $SSLSCALE_DATA_LOOP_PERIOD_S=0 turns it off."""
    try:
        from ray.data._internal.execution import streaming_executor as executor
    except ImportError:
        return
    process = getattr(executor, "process_completed_tasks", None)
    if LOOP_PERIOD_S <= 0 or process is None or getattr(process, "paced", False):
        return
    last: dict[int, float] = {}  # per executor (its topology), the start of its latest round

    def process_completed_tasks(topology, *args, **kwargs):
        time.sleep(max(0.0, last.get(id(topology), 0.0) + LOOP_PERIOD_S - time.monotonic()))
        last[id(topology)] = time.monotonic()
        return process(topology, *args, **kwargs)

    process_completed_tasks.paced = True
    executor.process_completed_tasks = process_completed_tasks


_pace_scheduling()


def _log_skip(skip_dir: str | None, kind: str, name: str, reason: str, epoch: int) -> None:
    """One file per skip event (tasks run in parallel, so no shared file); `skipped` merges them."""
    if skip_dir:
        storage.write_json(storage.join(skip_dir, f"{kind}-{uuid.uuid4().hex}.json"),
                           {"kind": kind, "name": name, "reason": reason, "epoch": epoch})


def skipped(skip_dir: str) -> dict[str, dict[str, str]]:
    """What a run left out: {"shard": {name: reason}, "sample": {id: reason}}, each once however many epochs."""
    out: dict[str, dict[str, str]] = {"shard": {}, "sample": {}}
    for name in storage.listdir(skip_dir):
        if name.endswith(".json"):
            event = storage.read_json(storage.join(skip_dir, name))
            out[event["kind"]].setdefault(event["name"], event["reason"])
    return out


class Part(NamedTuple):
    """What the stream makes from one data field of a record: the field (a modalities.Modality), the method's typed
    layout for it, and its view options (Modality.view_options: the run's augmentation strengths)."""

    field: Modality
    layout: Layout
    options: dict


def view_parts(cfg, manifest: dict, where: str, views: Callable[[object, dict], dict]) -> list[Part]:
    """The parts of the run's stream: for each kind of field the method reads (`views`, the method's
    Method.views: methods.view_parts passes it, so that data knows nothing of methods), the corpus's field of that
    kind with the method's layout for it. One line when the corpus lacks a kind or a layout is of another kind, or
    when two fields would make a batch field of one name."""
    sizes = {field.kind: field.size for field in data_fields(manifest, where).values()}
    parts = []
    for kind, layout in views(cfg, sizes).items():
        field = data_field(manifest, where, kind)
        field.check_layout(layout, cfg.method.name)
        parts.append(Part(field, layout, field.view_options(cfg)))
    names = [name for part in parts for name in part.layout.fields()]
    if len(set(names)) < len(names):
        raise SslscaleError(f"method.name={cfg.method.name} asks fields of {where} for views of one name twice "
                            f"({', '.join(names)}): give each kind's views their own names")
    return parts


def read_blocks(batch: dict, *, corpus_dir: str, fmt: str, consumed: Position, on_error: str,
                skip_dir: str | None, members: Members = ("image.png",), chunks: dict | None = None,
                rows: int = BLOCK_ROWS) -> Iterator[dict]:
    """One plan item {epoch, shard, sha256} (shard_views' input): the shard's rows not yet consumed in that epoch,
    as {id, epoch, raw: the data members' bytes (an image, token ids; a tuple, one per member), shard name}, in
    blocks of up to `rows` rows as the shard is read. `chunks` ({shard name: its manifest entry's chunk_bytes and chunks}; looked up here, not
    carried by every plan item, which epochs x shards would multiply) lets shards.iter_shard check a tar shard
    chunk by chunk. A shard found bad part-way stops the run (fail) or is recorded and the rest of it left out
    (skip); the blocks handed out before were checked."""
    epoch, name = int(batch["epoch"][0]), str(batch["shard"][0])
    found = iter_shard(storage.join(corpus_dir, name), fmt, sha256=str(batch["sha256"][0]), members=members,
                       **(chunks or {}).get(name, {}))
    try:
        for block in _groups(_unseen(found, epoch, consumed), rows):
            yield _block(block, epoch, name)
    except ShardError as e:
        if on_error == "fail":
            raise
        _log_skip(skip_dir, "shard", name, str(e), epoch)


def read_rows(batch: dict, **read) -> dict:
    """All of one plan item's rows not yet consumed, as one block (read_blocks')."""
    blocks = list(read_blocks(batch, **read, rows=2**62))
    return blocks[0] if blocks else _block([], int(batch["epoch"][0]), str(batch["shard"][0]))


def _groups(items: Iterable, n: int) -> Iterator[list]:
    """Consecutive lists of n items (the last one shorter)."""
    items = iter(items)
    while group := list(islice(items, n)):
        yield group


def _unseen(rows: Iterator[Row], epoch: int, consumed: Position) -> Iterator[tuple[int, tuple[bytes, ...]]]:
    """(id, data) of the rows `consumed` does not hold for `epoch`, asked BLOCK_ROWS rows at a time."""
    for group in _groups(rows, BLOCK_ROWS):
        seen = consumed.contains(epoch, np.asarray([r[0] for r in group], np.int64)).tolist()
        yield from ((sid, data) for (sid, data, _), used in zip(group, seen) if not used)


def _block(rows: list[tuple[int, tuple[bytes, ...]]], epoch: int, name: str) -> dict:
    raw = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):  # one tuple of members' bytes per row (a slice assignment would unpack them)
        raw[i] = row[1]
    return {"id": np.asarray([r[0] for r in rows], np.int64), "epoch": np.full(len(rows), epoch, np.int64),
            "raw": raw, "shard": np.full(len(rows), name, dtype=object)}


def make_views(batch: dict, *, seed: int, on_error: str, parts: list[Part], skip_dir: str | None = None) -> dict:
    """Rows of one epoch {id, epoch, raw bytes, shard} (a block of shard_views) -> {"id", "epoch", "view_0", ...}:
    each part's field decodes its member of every record and makes the fields of its layout (the method's, see
    methods.base.Method.views) with its view options; a record with a member that cannot be decoded is skipped
    (recorded) or stops the run, per on_error."""
    samples, kept, epochs = [], [], []
    for sid, epoch, raw, shard in zip(batch["id"].tolist(), batch["epoch"].tolist(), batch["raw"], batch["shard"]):
        decoded = [part.field.decoded_or_none(data) for part, data in zip(parts, raw)]
        bad = next((part.field for part, sample in zip(parts, decoded) if sample is None), None)
        if bad is not None:
            reason = f"sample {sid} in shard {shard} cannot be decoded as {bad.describe()} ({bad.name})"
            if on_error == "fail":
                raise SslscaleError(f"{reason}; re-prepare the corpus or set data.on_error=skip")
            _log_skip(skip_dir, "sample", str(sid), reason, epoch)
            continue
        samples.append(decoded)
        kept.append(sid)
        epochs.append(epoch)
    ids, epochs = np.asarray(kept, np.int64), np.asarray(epochs, np.int64)
    if not len(ids):  # every sample of the block was skipped: empty fields of the right shapes
        return {"id": ids, "epoch": epochs, **{k: v[:0] for k, v in _one_row(parts).items()}}
    out = {"id": ids, "epoch": epochs}
    for i, part in enumerate(parts):
        out.update(part.field.views(part.field.stack([s[i] for s in samples]), ids, seed=seed,
                                    epoch=int(epochs[0]), layout=part.layout, **part.options))
    return out


def shard_views(item: dict, *, read: dict, views: dict):
    """Ray Data UDF on one plan item {epoch, shard, sha256}: the views of the shard's samples not yet consumed in
    that epoch (read_blocks, then make_views), yielded in blocks of up to BLOCK_ROWS rows as the shard is read."""
    for rows in read_blocks(item, **read):
        yield make_views(rows, **views)


def _one_row(parts: list[Part]) -> dict:
    """The fields the parts make from one blank record: their shapes and dtypes, from the one place that knows."""
    out = {}
    for part in parts:
        blank = part.field.stack([part.field.blank()])
        out.update(part.field.views(blank, np.zeros(1, np.int64), seed=0, epoch=0, layout=part.layout,
                                    **part.options))
    return out


def row_bytes(parts: list[Part]) -> int:
    """Bytes of one row of the view stream (the fields the parts make, plus id and epoch)."""
    return sum(v.nbytes for v in _one_row(parts).values()) + 16


def epochs_needed(steps: int, batch_size: int, samples: int) -> int:
    """Epochs that cover `steps` global batches (one more for the rows equal splitting drops)."""
    return math.ceil(steps * batch_size / samples) + 1


def plan(shards: list[dict], epochs: int, seed: int, consumed: Position | None = None) -> list[dict]:
    """(epoch, shard) items: epoch after epoch, each epoch's shards in an order fixed by (seed, epoch), less those
    `consumed` holds whole (a resume reads none of them)."""
    consumed = consumed if consumed is not None else Position()
    lo = np.array([s["first_id"] for s in shards], np.int64)
    hi = lo + np.array([s["samples"] for s in shards], np.int64)
    items = []
    for epoch in range(consumed.done_below, epochs):
        done = consumed.covers(epoch, lo, hi)
        items += [{"epoch": epoch, "shard": shards[i]["name"], "sha256": shards[i]["sha256"]}
                  for i in np.random.default_rng([seed, epoch]).permutation(len(shards)) if not done[i]]
    return items


def pretrain_dataset(cfg, corpus_dir: str, parts: list[Part], *, consumed: Position | None = None,
                     skip_dir: str | None = None) -> ray.data.Dataset:
    """The run's view stream of `parts` (methods.view_parts); `consumed` (checkpoint.read_positions) drops what a
    checkpoint already used, `skip_dir` records what data.on_error=skip leaves out."""
    manifest = corpus.load_manifest(corpus_dir)
    corpus.shard_paths(manifest, corpus_dir, cfg.data.split)  # one-line error for a missing split
    split = manifest["splits"][cfg.data.split]
    epochs = epochs_needed(cfg.train.steps, cfg.data.batch_size, split["samples"])
    if cfg.data.on_error == "skip":  # up to half the corpus may turn out bad; unread epochs cost nothing
        epochs = 2 * epochs
    consumed = consumed if consumed is not None else Position(split["samples"])
    items = plan(split["shards"], epochs, cfg.data.seed, consumed)
    if not items:
        raise SslscaleError(f"the checkpoint already consumed all {epochs} epochs this run's train.steps need of "
                            f"{corpus_dir}: nothing is left to stream (raise train.steps)")
    read = dict(corpus_dir=corpus_dir, fmt=manifest["format"], consumed=consumed, on_error=cfg.data.on_error,
                skip_dir=skip_dir, members=tuple(part.field.member for part in parts),
                chunks={s["name"]: {"chunk_bytes": s["chunk_bytes"], "chunks": s["chunks"]}
                        for s in split["shards"] if s.get("chunks")})
    views = dict(seed=cfg.data.seed, on_error=cfg.data.on_error, skip_dir=skip_dir, parts=parts)
    # one task per plan item reads its shard and makes its views, in blocks of BLOCK_ROWS rows handed out as
    # they are made: no second operator, no raw bytes through the object store, and the split hands workers
    # small pieces of the same epoch, not an epoch each
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        shard_views, fn_kwargs={"read": read, "views": views}, batch_size=1, batch_format="numpy",
        num_cpus=cfg.data.task_cpus)  # what train's placement check counts
    dataset.context.target_max_block_size = BLOCK_ROWS * row_bytes(parts)
    return dataset


def quiet() -> None:
    """No per-operator progress bars: training prints its own progress line."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


RUN_AHEAD_BATCHES = 4  # data.buffer_mb=0: the views of this many global batches made ahead of training


def split_rows(cfg) -> int:
    """Rows of the object-store budget that the split across train.workers (Ray Train's streaming_split) and its
    consumers hold whatever the run-ahead, measured rather than derived (tests/test_run_ahead.py): per worker, its
    local shuffle buffer (data.shuffle_buffer), what its iterator prefetches (a micro-batch, at least a block) and
    two blocks in the split's queues; plus the block each running Ray Data task is making. With less, two workers
    in lockstep (each step's collectives) over blocks of uneven sizes (a shard's last block, a resumed run's
    partial shards) stalled for good: with micro-batches of 64 and shuffle buffers of 256, a budget of four
    batches (1,024 rows) stopped them at step 13 of 200; with micro-batches of 128 and shuffle buffers of 2,048,
    4,608 rows stopped them at step 91 and 5,632 (this sum) ran through. Without shuffle buffers 1,024 rows did.
    That is how a resumed run with the four-batch run-ahead once stalled."""
    per_worker = cfg.data.shuffle_buffer + max(BLOCK_ROWS, cfg.micro_batch()) + 2 * BLOCK_ROWS
    return cfg.train.workers * per_worker + math.ceil(cfg.data.cpus) * BLOCK_ROWS


def ingest_options(cfg, parts: list[Part]) -> ray.data.ExecutionOptions:
    """Bound what the view pipeline may use, so it runs just ahead of training instead of competing with it
    for the same cores: `data.cpus` CPUs and an object-store budget of `data.buffer_mb` for views not yet
    consumed (0, the default: RUN_AHEAD_BATCHES global batches of the method's views), never less than the
    split needs to make progress (split_rows). A big run-ahead costs training time while it fills (256 MB, ~160k
    views at 28 px, kept the stream working flat out through the first ~600 steps: -20% samples/s on 2 shared
    cores) and leaves its last views unused; a fast consumer (a GPU) may want more.
    Order is preserved only with data.deterministic: then every block reaches the same worker in the same order
    on every run (Ray's split gives each block to the worker with the fewest rows so far), which makes a run
    repeatable; otherwise blocks in flight together may arrive out of order, which the per-epoch consumed ids
    account for. (With preserve_order, a union of per-epoch pipelines once stalled the split coordinator.)"""
    one_row = row_bytes(parts)
    run_ahead = cfg.data.buffer_mb * 2**20 or RUN_AHEAD_BATCHES * max(cfg.data.batch_size, BLOCK_ROWS) * one_row
    limits = ray.data.ExecutionResources(cpu=cfg.data.cpus, object_store_memory=run_ahead + split_rows(cfg) * one_row)
    return ray.data.ExecutionOptions(resource_limits=limits, preserve_order=cfg.data.deterministic)


def labelled_views(field: Modality, images: np.ndarray, labels: np.ndarray, samples: np.ndarray,
                   view_ids: np.ndarray, views: dict, seed: int, block_rows: int,
                   task_cpus: float = 1.0) -> ray.data.Dataset:
    """Evaluation's labelled stream (fine-tuning on Ray Train workers; pretraining never builds it): row i is one
    view of images[samples[i]] (`field`'s Modality.labelled, augmentation strengths `views`, view id view_ids[i])
    and its label, in that order, made by Ray Data tasks `block_rows` rows at a time from one copy of the arrays in
    the object store: {field.labelled_field: ..., "label": int64}. Each task reserves `task_cpus` CPUs."""
    arrays = ray.put({"images": images, "labels": np.asarray(labels, np.int64), "samples": samples,
                      "views": view_ids})

    def make(batch: dict) -> dict:
        got = ray.get(arrays)  # zero-copy views of the object store's copy
        rows = batch["id"]
        take = got["samples"][rows]
        return {**field.labelled(got["images"][take], got["views"][rows], seed=seed, views=views),
                "label": got["labels"][take]}

    blocks = max(1, math.ceil(len(samples) / block_rows))
    return ray.data.range(len(samples), override_num_blocks=blocks).map_batches(make, batch_size=block_rows,
                                                                              num_cpus=task_cpus)


def map_in_actors(rows: list[dict], actor: type, kwargs: dict, batch_size: int, workers: int) -> list[dict]:
    """Every row through `workers` Ray Data actors of class `actor` (constructed once each with `kwargs`, then
    called on batches of `batch_size` rows as dicts of columns), one CPU each; the rows they return, in no fixed
    order (`sslscale embed --workers`)."""
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    return ds.map_batches(actor, fn_constructor_kwargs=kwargs, batch_size=batch_size, concurrency=workers,
                          num_cpus=1, batch_format="numpy").take_all()


def in_order() -> ray.data.ExecutionOptions:
    """Ingest options that keep a stream's row order (labelled_views: the same seed gives the same batches)."""
    return ray.data.ExecutionOptions(preserve_order=True)
