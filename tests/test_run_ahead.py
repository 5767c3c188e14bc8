"""The stream's object-store budget (stream.ingest_options) never stalls training: two consumers of a real Ray Data
streaming_split in lockstep, as Ray Train workers are (each step's collectives), over blocks of uneven sizes (a
shard's last block, a resumed run's partial shards), under the budget a config gets. Before the split's own rows
were counted (stream.split_rows), the default-to-be four-batch run-ahead stalled here for good."""
import threading

import numpy as np
import pytest

from sslscale import stream

pytestmark = pytest.mark.slow


def _lockstep(budget_bytes: int, row_bytes: int, micro: int, shuffle: int, steps: int, limit: float = 120) -> list:
    """Steps each of two lockstep consumers finished within `limit` seconds."""
    import ray.data

    def rows(batch):
        return {"x": np.zeros((int(batch["n"][0]), row_bytes), np.uint8)}

    sizes = np.random.default_rng(0).integers(20, stream.BLOCK_ROWS + 1, 400)  # ~55k rows
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
        finally:
            batches.close()  # stops the iterator's prefetch threads before Ray shuts down

    threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit)
    barrier.abort()
    return done


@pytest.mark.parametrize("micro, shuffle, steps", [(32, 256, 200), (128, 2048, 100)])
def test_two_lockstep_workers_run_through_uneven_blocks_under_the_default_budget(debug_cfg, data_root, ray_local,
                                                                                 micro, shuffle, steps):
    """The debug recipe's shape (micro-batch 32, shuffle buffer 256) and the demo's (128, 2,048), each under the
    budget ingest_options gives it by default (data.buffer_mb=0)."""
    from sslscale import corpus
    from sslscale.methods import view_layout

    cfg = debug_cfg.override([f"data.batch_size={2 * micro}", f"data.shuffle_buffer={shuffle}"])
    corpus_dir = f"{data_root}/digits"
    assert cfg.data.buffer_mb == 0 and cfg.micro_batch() == micro
    size, channels, text = stream.data_spec(corpus.load_manifest(corpus_dir))
    budget = stream.ingest_options(cfg, corpus_dir).resource_limits.object_store_memory
    rows = budget // stream.row_bytes(view_layout(cfg, size), size, channels, text)  # what the budget holds
    row = 512  # bytes of a row here: the same number of rows as views
    assert _lockstep(rows * row, row, micro, shuffle, steps) == [steps, steps]
