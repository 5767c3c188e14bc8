"""Placement: a request the cluster can never meet is one line within seconds, not a wait forever; the arithmetic
of what fits where."""
import math
import os
import subprocess
import sys

import pytest

from sslscale.runtime.cluster import describe, fits, slots

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


def test_fits_places_every_bundle_at_once():
    """The hang of issue 27: a CPU-0 head and one 2-CPU node hold two 1-CPU training workers, but then not the
    Ray Data task beside them; a second node, or a fractional task, or an autoscaler's node type makes room."""
    head, node = ({"CPU": 0, "sslscale_driver": 8}, 1), {"CPU": 2}
    run = [({"CPU": 1}, 2), ({"CPU": 1}, 1)]
    assert not fits([head, (node, 1)], run)
    assert fits([head, (node, 2)], run)
    assert fits([head, (node, 1), ({"CPU": 4}, math.inf)], run)
    assert fits([head, ({"CPU": 2.5}, 1)], [({"CPU": 1}, 2), ({"CPU": 0.5}, 1)])  # data.cpus=0.5
    gpu = ({"CPU": 2, "GPU": 2}, 1)  # a GPU node whose CPUs all go to its training workers
    assert not fits([gpu], [({"CPU": 1, "GPU": 1}, 2), ({"CPU": 1}, 1)])
    assert fits([gpu, ({"CPU": 1}, 1)], [({"CPU": 1, "GPU": 1}, 2), ({"CPU": 1}, 1)])
    # several small groups (a sweep's drivers and data tasks) beside the largest: 9 trials of 3.25 CPUs in 32
    trials = lambda k: [({"CPU": 0.25}, k), ({"CPU": 1}, 2 * k), ({"CPU": 1}, k)]  # noqa: E731
    assert fits([({"CPU": 8}, 4)], trials(9)) and not fits([({"CPU": 8}, 4)], trials(10))
    assert fits([], []) and fits([({"CPU": 1}, 1)], [({"CPU": 0}, 3)])  # nothing asked for fits anywhere


def test_describe_names_what_the_cluster_offers():
    nodes = [({"CPU": 0.0, "sslscale_driver": 8.0, "memory": 1e9, "node:127.0.0.1": 1.0}, 1), ({"CPU": 2.0}, 1),
             ({"CPU": 2.0}, 1), ({"CPU": 8.0, "GPU": 1.0}, math.inf)]
    assert describe(nodes) == ("1 node of CPU 0, sslscale_driver 8; 2 nodes of CPU 2; no limit of nodes of "
                               "CPU 8, GPU 1")


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
    assert "'trainer': 1.0} each and a Ray Data task of {'CPU': 1.0} can never run at once: the cluster's nodes " \
           "have 1 node of CPU 4" in line, line


def test_a_run_that_fits_once_the_autoscaler_adds_nodes_says_so_and_one_that_never_fits_fails(
        debug_cfg, ray_local, tmp_path, monkeypatch, capsys):
    """Against the real local instance (4 logical CPUs) and a `ray up` head's launcher config: 4 training workers
    and their Ray Data task need 5 CPUs, which only the config's node types provide."""
    from sslscale.errors import SslscaleError
    from sslscale.training.train import check_workers

    check_workers(debug_cfg, 3, "train.workers")  # 3 + 1 CPUs: fits now, nothing said
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("HOME", str(tmp_path))
    launcher = tmp_path / "ray_bootstrap_config.yaml"
    launcher.write_text("available_node_types:\n  head: {resources: {CPU: 0}, max_workers: 0}\n"
                        "  cpu: {resources: {CPU: 2}, max_workers: 1}\n")
    check_workers(debug_cfg, 4, "train.workers")
    assert capsys.readouterr().out == (
        "train.workers=4 training workers of {'CPU': 1.0} each and a Ray Data task of {'CPU': 1.0}: they fit only "
        "once the autoscaler adds nodes (its config's node types at their max_workers); waiting for them\n")
    with pytest.raises(SslscaleError) as e:
        check_workers(debug_cfg, 6, "train.workers")  # 7 CPUs: more than the node and the config's one more node
    assert str(e.value).startswith(
        "train.workers=6 training workers of {'CPU': 1.0} each and a Ray Data task of {'CPU': 1.0} can never run at "
        "once: the cluster's nodes and its config's node types at their max_workers have 1 node of CPU 2; "
        "1 node of CPU 4; add a node with spare CPUs, lower train.workers"), str(e.value)
