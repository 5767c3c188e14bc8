"""Test helper, run as a script: two consumers of a real Ray Data streaming_split in lockstep, as Ray Train workers
are (each step's collectives), over blocks of uneven sizes (a shard's last block, a resumed run's partial shards),
under an object-store budget. Prints the steps each finished as JSON. Its own process and Ray instance: a stalled
split leaves threads that Ray's shutdown would trip over, so it ends with os._exit.

    python tests/lockstep.py BUDGET_BYTES ROW_BYTES MICRO SHUFFLE STEPS LIMIT_S
"""
import json
import os
import sys
import threading

import numpy as np
import ray
import ray.data

BLOCK_ROWS = 256  # the largest block, as the stream's (stream.BLOCK_ROWS)


def lockstep(budget_bytes: int, row_bytes: int, micro: int, shuffle: int, steps: int, limit: float) -> list[int]:
    def rows(batch):
        return {"x": np.zeros((int(batch["n"][0]), row_bytes), np.uint8)}

    sizes = np.random.default_rng(0).integers(20, BLOCK_ROWS + 1, 400)  # ~55k rows
    ds = ray.data.from_items([{"n": int(n)} for n in sizes], override_num_blocks=len(sizes)).map_batches(
        rows, batch_size=1)
    ds.context.execution_options.resource_limits = ray.data.ExecutionResources(cpu=1, object_store_memory=budget_bytes)
    splits, barrier, done = ds.streaming_split(2, equal=True), threading.Barrier(2, timeout=limit), [0, 0]

    def consume(i: int) -> None:
        batches = iter(splits[i].iter_batches(batch_size=micro, local_shuffle_buffer_size=shuffle or None))
        try:
            for step in range(steps):
                next(batches)
                done[i] = step + 1
                barrier.wait()
        except threading.BrokenBarrierError:
            pass

    threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit)
    return done


if __name__ == "__main__":
    budget, row, micro, shuffle, steps = (int(a) for a in sys.argv[1:6])
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    print(json.dumps(lockstep(budget, row, micro, shuffle, steps, float(sys.argv[6]))), flush=True)
    os._exit(0)
