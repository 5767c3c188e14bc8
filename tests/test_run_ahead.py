"""The stream's object-store budget (stream.ingest_options) never stalls training: two consumers of a real Ray Data
streaming_split in lockstep (tests/lockstep.py), under the budget a config gets by default. Before the split's own
rows were counted (stream.split_rows), the four-batch run-ahead stalled there for good (step 41 of 200)."""
import json
import os
import subprocess
import sys

import pytest

from sslscale.data import stream
from sslscale.methods import view_parts

pytestmark = pytest.mark.slow
LOCKSTEP = os.path.join(os.path.dirname(__file__), "lockstep.py")


# the demo's shape in make test; the debug recipe's (~10 s) in make test-long
@pytest.mark.parametrize("micro, shuffle, steps", [pytest.param(32, 256, 200, marks=pytest.mark.long), (128, 2048, 100)])
def test_two_lockstep_workers_run_through_uneven_blocks_under_the_default_budget(debug_cfg, data_root, micro,
                                                                                 shuffle, steps):
    """The debug recipe's shape (micro-batch 32, shuffle buffer 256) and the demo's (128, 2,048), each under the
    budget ingest_options gives it by default (data.buffer_mb=0)."""
    cfg = debug_cfg.override([f"data.batch_size={2 * micro}", f"data.shuffle_buffer={shuffle}"])
    corpus_dir = os.path.join(data_root, "digits")
    assert cfg.data.buffer_mb == 0 and cfg.micro_batch() == micro
    parts = view_parts(cfg, corpus_dir)
    budget = stream.ingest_options(cfg, parts).resource_limits.object_store_memory
    rows = budget // stream.row_bytes(parts)  # what the budget holds
    row = 512  # bytes of a row in the harness: the same number of rows as views
    done = subprocess.run([sys.executable, LOCKSTEP, str(rows * row), str(row), str(micro), str(shuffle), str(steps),
                           "120"], capture_output=True, text=True, timeout=400)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [steps, steps], done.stderr[-3000:]
