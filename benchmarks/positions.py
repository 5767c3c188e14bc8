"""The stream's position in a checkpoint, side by side in one run: the old format (every consumed sample id, per
epoch, in one JSON file per rank, unioned on resume) against sslscale.data.position (ranges per epoch and a watermark).

    python benchmarks/positions.py [--quick] [--out docs/positions.json]

Simulated run: an ImageNet-sized split (1.28M ids in shards of 5,000), 2 ranks. The stream reads each epoch's shards
in a seeded order and cuts them into blocks of 256 rows; each block goes to a random rank (Ray's streaming split
hands it to whichever asks). A run that consumed C ids finished C // N epochs and stopped inside the next one, with
the rows in flight (2 ranks x a 2,048-row shuffle buffer) left as holes among the last 4 shards read.

Per consumed count C (10^5 .. 10^8) and format:
  bytes      the position files of one checkpoint
  save s     serialise + write + sha256 (the rank manifest); old and per-rank: the slowest rank (ranks save at the
             same time); new: the union of the ranks' positions (what rank 0 does after an all-gather, the
             exchange itself not timed) then one file
  resume s   what the driver does before the stream starts: sha256 (verify) + read + union + build the filter
             (old: sorted ids per epoch as arrays; new: the Position, and the plan's whole-shard check)
  re-read    shards the stream reads only to discard every row (old: every shard of every epoch begun; new: none)
  filter ms  the filter for one shard read in the current epoch (old: set(ids of the epoch) + lookups, once per
             read; new: Position.contains)
  memory     what one rank holds in memory for its position (old: a Python list of ints per epoch)
The old format at 10^8 ids peaks at ~15 GB and takes ~2 minutes more: by default it is extrapolated linearly from
10^7 (each epoch costs the same) and marked estimated; `--measure-old-up-to 1e8` measures it (its resume then took
twice the estimate here: the sets no longer fit in cache). Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from sslscale import storage
from sslscale.data.position import Position

N, SHARD, BLOCK, RANKS, BUFFER, WINDOW = 1_280_000, 5_000, 256, 2, 2048, 4
HOLES = RANKS * BUFFER
COUNTS, QUICK, MEASURE_OLD_UP_TO = (10**5, 10**6, 10**7, 10**8), (10**5, 10**6), 10**7


# ---------------------------------------------------------------- the simulated run

def _epoch_stream(epoch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids in stream order, the rank each id goes to) for one whole epoch."""
    rng = np.random.default_rng([seed, epoch])
    ids = (rng.permutation(N // SHARD)[:, None] * SHARD + np.arange(SHARD)).ravel()  # shards in a seeded order
    per_shard = -(-SHARD // BLOCK)
    block = np.arange(N) // SHARD * per_shard + np.arange(N) % SHARD // BLOCK  # a block never spans two shards
    return ids, rng.integers(0, RANKS, N // SHARD * per_shard)[block]


def _shuffled(ids: np.ndarray, rng) -> np.ndarray:
    """ids in the order a local shuffle buffer of BUFFER rows lets them out: each row late by up to BUFFER rows."""
    return ids[np.argsort(np.arange(len(ids)) + rng.uniform(0, BUFFER, len(ids)))]


def simulate(consumed: int, seed: int = 0):
    """Yields (epoch, [ids each rank consumed, in its shuffle buffer's order]) epoch by epoch."""
    full, partial = divmod(consumed, N)
    for epoch in range(full + (partial > 0)):
        ids, rank = _epoch_stream(epoch, seed)
        keep = np.ones(N, bool)
        if epoch == full:  # the current epoch: a prefix of the stream, with the rows in flight missing
            read = min(N, partial + HOLES)
            keep[read:] = False
            window = np.arange(max(0, read - WINDOW * SHARD), read)
            keep[np.random.default_rng(seed).choice(window, read - partial, replace=False)] = False
        rng = np.random.default_rng([seed, epoch, 1])
        yield epoch, [_shuffled(ids[keep & (rank == r)], rng) for r in range(RANKS)]


# ---------------------------------------------------------------- the old format, as train.py/checkpoint.py write it

def old_save(folder: str, rank: int, position: dict) -> None:
    path = os.path.join(folder, f"position.rank{rank}.json")
    storage.write_json(path, position)
    storage.sha256(path)  # write_rank_files puts every file's sha256 in the rank's manifest


def old_resume(folder: str) -> dict[int, np.ndarray]:
    """verify's sha256, checkpoint.read_positions, then pretrain_dataset's arrays."""
    consumed: dict[int, set] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        storage.sha256(path)
        for epoch, ids in storage.read_json(path).items():
            consumed.setdefault(int(epoch), set()).update(ids)
    positions = {e: sorted(ids) for e, ids in consumed.items()}
    return {e: np.asarray(ids, np.int64) for e, ids in positions.items()}


def old_filter_s(consumed: dict[int, np.ndarray], epoch: int, shard_ids: np.ndarray) -> float:
    t = time.perf_counter()
    done = set(consumed.get(epoch, ()))  # stream.read_rows, for every shard it reads
    [sid for sid in shard_ids.tolist() if sid not in done]
    return time.perf_counter() - t


def measure_old(per_rank: list[dict], folder: str) -> tuple[dict, dict]:
    save = []
    for rank, position in enumerate(per_rank):
        t = time.perf_counter()
        old_save(folder, rank, position)
        save.append(time.perf_counter() - t)
    t = time.perf_counter()
    consumed = old_resume(folder)
    resume = time.perf_counter() - t
    memory = sum(sys.getsizeof(ids) + 28 * len(ids) for ids in per_rank[0].values())  # 28 B per int object
    return {"bytes": _bytes(folder), "save_s": max(save), "resume_s": resume, "memory_bytes": memory,
            "estimated": False}, consumed


# ---------------------------------------------------------------- the new format

def new_save(folder: str, name: str, position: Position) -> None:
    path = os.path.join(folder, name)
    storage.write_json(path, position.to_json())
    storage.sha256(path)


def new_resume(folder: str, epochs: int) -> Position:
    """sha256, read, union of the files, and the plan's whole-shard check over every planned epoch."""
    position = Position(N)
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        storage.sha256(path)
        position.merge(Position.load(storage.read_json(path), N))
    lo = np.arange(0, N, SHARD)
    for epoch in range(position.done_below, epochs):
        position.covers(epoch, lo, lo + SHARD)
    return position


def measure_new(ranks: list[Position], folder: str, epochs: int, current: int, shard_ids: np.ndarray) -> dict:
    def save() -> Position:
        union = Position.from_array(np.concatenate([r.to_array() for r in ranks]), N)  # rank 0 after the all-gather
        new_save(folder, "position.json", union)
        return union

    save_s, union = _best(save)
    resume_s, resumed = _best(lambda: new_resume(folder, epochs))
    filter_s, _ = _best(lambda: resumed.contains(current, shard_ids))
    return {"bytes": _bytes(folder), "save_s": save_s, "resume_s": resume_s, "filter_ms": 1e3 * filter_s,
            "ranges": len(union.to_array()), "memory_bytes": int(union.to_array().nbytes), "position": resumed}


def measure_per_rank(ranks: list[Position], folder: str, epochs: int) -> dict:
    save_s = max(_best(lambda: new_save(folder, f"position.rank{rank}.json", position))[0]
                 for rank, position in enumerate(ranks))
    resume_s, _ = _best(lambda: new_resume(folder, epochs))
    return {"bytes": _bytes(folder), "save_s": save_s, "resume_s": resume_s,
            "ranges": max(len(r.to_array()) for r in ranks),
            "memory_bytes": max(int(r.to_array().nbytes) for r in ranks)}


def _best(fn, repeat: int = 3) -> tuple[float, object]:
    """(seconds of the fastest of `repeat` calls, the last call's result): the new format's costs are milliseconds,
    where one call is mostly noise."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def _bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))


# ---------------------------------------------------------------- one consumed count

def run_count(consumed: int, measure_old_up_to: int, previous: dict | None) -> dict:
    full, partial = divmod(consumed, N)
    current, planned = full, full + 2  # stream.epochs_needed plans one epoch more than the steps need
    ranks, truth = [Position(N) for _ in range(RANKS)], {}
    keep_old = consumed <= measure_old_up_to
    per_rank_old: list[dict] = [{} for _ in range(RANKS)]
    for epoch, rank_ids in simulate(consumed):
        for rank, ids in enumerate(rank_ids):
            ranks[rank].add(epoch, ids)
            if keep_old:
                per_rank_old[rank][str(epoch)] = ids.tolist()  # what train._record builds
        truth[epoch] = np.sort(np.concatenate(rank_ids))
    shard_ids = np.arange(SHARD) + SHARD * int(_epoch_stream(current)[0][0] // SHARD)  # the epoch's first shard
    row = {"consumed": consumed, "epochs_full": full, "partial": partial}
    with tempfile.TemporaryDirectory() as old_dir, tempfile.TemporaryDirectory() as new_dir, \
            tempfile.TemporaryDirectory() as rank_dir:
        if keep_old:
            row["old"], old_union = measure_old(per_rank_old, old_dir)
            del per_rank_old
        else:
            row["old"], old_union = _extrapolate(previous, consumed), None
        new = measure_new(ranks, new_dir, planned, current, shard_ids)
        row["new_per_rank"] = measure_per_rank(ranks, rank_dir, planned)
    row["old"]["filter_ms"] = 1e3 * old_filter_s(truth, current, shard_ids)  # needs the current epoch's ids only
    resumed = new.pop("position")
    new["identical"] = _same(resumed, truth) and (old_union is None or _same_old(old_union, truth))
    row["new"] = new
    # the old stream reads every shard of every epoch begun, only to discard the rows of those consumed whole; the
    # new plan leaves those out unread
    lo = np.arange(0, N, SHARD)
    done = np.bincount(truth[current] // SHARD, minlength=len(lo)) == SHARD if partial else np.zeros(len(lo), bool)
    whole = full * len(lo) + int(done.sum())
    row["old"]["shards_reread"], row["new"]["shards_reread"] = whole, 0
    row["new"]["shards_dropped_at_plan"] = sum(int(resumed.covers(e, lo, lo + SHARD).sum()) for e in range(planned))
    row["new"]["identical"] &= row["new"]["shards_dropped_at_plan"] == whole
    row["ratio"] = {k: row["old"][k] / max(row["new"][k], 1e-9) for k in ("bytes", "save_s", "resume_s")}
    return row


def _same(position: Position, truth: dict[int, np.ndarray]) -> bool:
    ids = np.arange(N)
    return all(np.array_equal(ids[position.contains(e, ids)], want) for e, want in truth.items())


def _same_old(old: dict[int, np.ndarray], truth: dict[int, np.ndarray]) -> bool:
    return old.keys() == truth.keys() and all(np.array_equal(old[e], want) for e, want in truth.items())


def _extrapolate(previous: dict, consumed: int) -> dict:
    """The old format's costs grow linearly with the ids (each epoch costs the same): scale the last measured row."""
    scale = consumed / previous["consumed"]
    old = previous["old"]
    return {"bytes": int(old["bytes"] * scale), "save_s": old["save_s"] * scale, "resume_s": old["resume_s"] * scale,
            "memory_bytes": int(old["memory_bytes"] * scale), "estimated": True}


# ---------------------------------------------------------------- what a step costs to record

def record_costs(batch: int = 128) -> dict:
    """Microseconds per micro-batch of `batch` rows (one rank's share of a 256 global batch): train._record's
    per-id loop against Position.record, over one rank's share of an epoch."""
    ids, rank = _epoch_stream(0)
    ids = _shuffled(ids[rank == 0], np.random.default_rng(1))
    steps = len(ids) // batch
    ids = ids[: steps * batch].reshape(steps, batch)
    epochs = np.zeros(batch, np.int64)
    old: dict = {}
    t = time.perf_counter()
    for row in ids:
        for epoch, sid in zip(epochs.tolist(), row.tolist()):
            old.setdefault(str(epoch), []).append(sid)
    old_us = 1e6 * (time.perf_counter() - t) / steps
    new = Position(N)
    t = time.perf_counter()
    for row in ids:
        new.record(epochs, row)
    return {"batch": batch, "steps": steps, "old_us": old_us, "new_us": 1e6 * (time.perf_counter() - t) / steps,
            "new_ranges_after": len(new.ranges(0))}


# ---------------------------------------------------------------- report

def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000


def _cells(m: dict) -> str:
    filter_ms = f"{m['filter_ms']:.2f}" if "filter_ms" in m else ""
    return (f"{_size(m['bytes'])} | {m['save_s']:.3f} | {m['resume_s']:.3f} | {m.get('shards_reread', '')} | "
            f"{filter_ms} | {_size(m['memory_bytes'])}")


def table(rows: list[dict]) -> str:
    lines = ["| consumed ids | epochs done + ids in the current | format | position bytes | save s | resume s | "
             "shards re-read at resume | filter per shard read ms | memory per rank |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['consumed']:.0e} | {r['epochs_full']} + {r['partial']:,} |"
        old = "old: ids per rank" + (" (estimated)" if r["old"]["estimated"] else "")
        for name, key in ((old, "old"), ("new: union (gathered), 1 file", "new"),
                          ("new: each rank its own file", "new_per_rank")):
            lines.append(f"{head} {name} | {_cells(r[key])} |")
        q = r["ratio"]
        lines.append(f"{head} old / new (union) | {q['bytes']:,.0f}x | {q['save_s']:,.0f}x | {q['resume_s']:,.0f}x "
                     f"| | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10^5 and 10^6 ids only (a smoke test, seconds)")
    p.add_argument("--out", default="docs/positions.json")
    p.add_argument("--measure-old-up-to", type=float, default=MEASURE_OLD_UP_TO,
                   help="larger counts extrapolate the old format (default 1e7)")
    args = p.parse_args()
    run_count(10**4, 10**4, None)  # warm-up (imports, first writes): not reported
    start, rows = time.perf_counter(), []
    for consumed in QUICK if args.quick else COUNTS:
        rows.append(run_count(consumed, int(args.measure_old_up_to), rows[-1] if rows else None))
        print(f"{consumed:.0e} ids done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    record = record_costs()
    print(table(rows))
    print(f"\nrecording a step of {record['batch']} rows: old {record['old_us']:.0f} us, new {record['new_us']:.0f} us "
          f"({record['new_ranges_after']} ranges after {record['steps']} steps on one rank)")
    if any(r["old"]["estimated"] for r in rows):
        print(f"old format above {args.measure_old_up_to:.0e} ids: estimated (linear from the last measured row)")
    setup = {"samples": N, "shard": SHARD, "block": BLOCK, "ranks": RANKS, "shuffle_buffer": BUFFER,
             "holes": HOLES, "window_shards": WINDOW,
             "seconds": time.perf_counter() - start}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"setup": setup, "rows": rows, "record": record}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
