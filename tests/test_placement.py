"""Placement: a request the cluster can never meet is one line within seconds, not a wait forever; the arithmetic
of what fits where."""
import math
import os
import subprocess
import sys

import pytest

from sslscale.runtime import slots

SSLSCALE = os.path.join(os.path.dirname(sys.executable), "sslscale")


def test_slots_count_whole_bundles_per_node():
    """A bundle must fit inside one node; nodes that may come (max_workers) count, unlimited ones without end."""
    gpu_node, cpu_node = {"CPU": 48, "GPU": 4}, {"CPU": 32}
    assert slots([(gpu_node, 2), (cpu_node, 6)], {"CPU": 8, "GPU": 1}) == 8
    assert slots([(gpu_node, 2), (cpu_node, 6)], {"CPU": 1}) == 2 * 48 + 6 * 32
    assert slots([(gpu_node, 2)], {"CPU": 1, "GPU": 8}) == 0  # 8 GPUs in one worker: no node has them
    assert slots([({"CPU": 0, "sslscale_driver": 8}, 1)], {"CPU": 0.25}) == 0  # a CPU-0 head trains nothing
    assert slots([({"CPU": 3}, 1)], {"CPU": 0.1}) == 30  # no float residue: 3 / 0.1 is 30, not 29
    assert slots([(cpu_node, math.inf)], {"CPU": 1}) == math.inf and slots([], {}) == math.inf


@pytest.mark.slow
def test_a_request_no_node_can_meet_fails_in_one_line(data_root, tmp_path):
    """Two workers asking a resource no node of this local instance has: one line, not a wait forever."""
    env = {**os.environ, "SSLSCALE_DATA": data_root}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([SSLSCALE, "pretrain", "--recipe", "debug", "train.worker_resources=trainer:1",
                          "tracking.enabled=false"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    [line] = [ln for ln in out.stderr.splitlines() if ln.startswith("sslscale: error:")]
    assert "'trainer': 1.0} each can never be placed: the cluster's nodes have room for 0" in line, line
