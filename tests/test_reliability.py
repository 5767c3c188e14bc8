"""Faults injected into real runs (Ray Train, 2 workers, DeepSpeed, Ray Data, an sqlite MLflow store, real files).

Each test proves one guarantee of docs/reliability.md; slow (tens of seconds each): `make test` runs the NaN steps, `make test-long`
(which CI runs too) the worker kill (~90 s), the bad data, MLflow outage and determinism runs."""
import glob
import json
import os
import re
import signal
import threading
import time

import psutil
import pytest
import torch

from damage import copy_corpus, rewrite_tar, truncate
from mlflow_server import MlflowServer
from sslscale.data import corpus
from sslscale.errors import SslscaleError
from sslscale.runtime import tracking
from sslscale.training import checkpoint, faults

pytestmark = pytest.mark.slow


@pytest.fixture
def nan_at_4_and_5(monkeypatch):
    """Rank 0's input (so its loss) is NaN at steps 4 and 5: the driver hands the spec to the workers."""
    monkeypatch.setenv(faults.ENV, "nan_loss@4-5")


def test_nonfinite_steps_are_skipped_and_the_run_goes_on(nan_at_4_and_5, debug_cfg, ray_local, record):
    from sslscale import pretrain

    debug_cfg.train.steps, debug_cfg.transfer.enabled, debug_cfg.train.max_bad_steps = 8, False, 3
    result = pretrain(debug_cfg)
    uri, run_id = result.tracking_uri, result.run_id
    assert [s for s, v in tracking.history(uri, run_id, "skipped") if v] == [4, 5]  # only rank 0 was poisoned
    assert [s for s, _ in tracking.history(uri, run_id, "loss")] == [1, 2, 3, 6, 7, 8]
    assert tracking.get_run(uri, run_id).info.status == "FINISHED"
    weights = torch.load(os.path.join(result.checkpoint, "ds", "mp_rank_00_model_states.pt"),
                         weights_only=True)["module"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    record(fault="bad numbers", injected="NaN input on rank 0 at steps 4-5 (SSLSCALE_FAULTS)",
           outcome="both steps skipped on both workers (weights, optimizer, BatchNorm stats kept), `skipped`=1 "
                   "logged, the run finished; K=train.max_bad_steps in a row stop it naming the intact checkpoint "
                   "(test_train_loop.py)",
           lost="0 (the 2 skipped batches are consumed, not trained on)", repeated=0, recover_s="0 (next step)")


def _kill_a_worker_after_first_checkpoint(runs: str, killed: dict, limit: float = 300) -> None:
    """SIGKILL one Ray Train worker process once a checkpoint exists, then note when the retried attempt writes its
    first checkpoint (runs in a thread beside pretrain)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        run_dirs = [os.path.join(runs, d) for d in os.listdir(runs)] if os.path.isdir(runs) else []
        if not killed and any(checkpoint.latest(d) for d in run_dirs):
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.update(pid=proc.info["pid"], at=time.time())
                    break
        if killed and any(checkpoint.latest(os.path.join(d, "attempt-1")) for d in run_dirs
                          if os.path.isdir(os.path.join(d, "attempt-1"))):
            killed["recovered"] = time.time()
            return
        time.sleep(0.2)


@pytest.mark.long
def test_killed_worker_is_retried_from_the_checkpoint_in_the_same_run(debug_cfg, ray_local, data_root, capsys,
                                                                     record, monkeypatch):
    from sslscale import pretrain

    monkeypatch.setenv(faults.ENV, "slow_step@6-20")  # the kill lands mid-epoch however fast the steps are

    steps = 60
    debug_cfg.train.steps, debug_cfg.train.checkpoint_every, debug_cfg.train.max_failures = steps, 5, 1
    debug_cfg.transfer.enabled = False
    debug_cfg.data.shuffle_buffer = 0  # so epoch 0 is finished by step 60, not partly held in a shuffle buffer
    killed = {}
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=("runs", killed), daemon=True)
    killer.start()
    result = pretrain(debug_cfg)
    killer.join()
    assert killed, "no worker was killed: the run ended before its first checkpoint was seen"
    out = capsys.readouterr().out
    assert "retrying from the latest checkpoint (1 of 1)" in out
    resumed_at = int(re.search(r"resuming from the checkpoint at step (\d+)", out).group(1))
    assert resumed_at * 64 < 1437, "the kill came after epoch 0 ended: the test no longer resumes mid-epoch"

    uri, run_id = result.tracking_uri, result.run_id
    assert [s for s, _ in tracking.history(uri, run_id, "loss")] == list(range(1, steps + 1))
    runs = tracking.client(uri).search_runs([tracking.get_run(uri, run_id).info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    # 60 steps x 64 samples cover epoch 0 completely: every training id exactly once, across the kill. The
    # position is the union of what every rank consumed; each checkpoint counts the rows consumed a second time.
    ids, _, _ = corpus.read_split(os.path.join(data_root, "digits"), "train", with_labels=False)
    position = checkpoint.read_positions(result.checkpoint, len(ids))
    repeated = checkpoint.read_state(result.checkpoint)["repeated_samples"]
    assert position.complete(0) and repeated == 0
    record(fault="worker killed", injected="SIGKILL of a Ray Train worker process after the first checkpoint",
           outcome="attempt retried from the latest checkpoint on a stream without the consumed samples, same "
                   "MLflow run, steps 1-60 logged once each",
           lost=len(ids) - position.count(0), repeated=repeated,
           recover_s=round(killed["recovered"] - killed["at"], 1))


@pytest.mark.long
def test_bad_data_is_skipped_and_reported_or_stops_the_run(debug_cfg, ray_local, data_root, tmp_path, record,
                                                           capsys):
    from sslscale import pretrain

    folder = copy_corpus(os.path.join(data_root, "digits"), tmp_path / "damaged")
    corpus.prepare("digits", folder, shard_size=500, progress=False, overwrite=True)  # 3 train shards
    truncate(folder / "train-000001.tar")
    rewrite_tar(folder / "train-000002.tar", {"00001007.image.png": b"\x89PNG garbage"})
    debug_cfg.data.corpus, debug_cfg.data.on_error, debug_cfg.transfer.enabled = str(folder), "skip", False
    debug_cfg.train.steps, debug_cfg.train.checkpoint_every = 16, 8  # 16 x 64 > one epoch of the 936 good samples
    result = pretrain(debug_cfg)
    run = tracking.get_run(result.tracking_uri, result.run_id)
    assert run.data.metrics["data/skipped_shards"] == 1 and run.data.metrics["data/skipped_samples"] == 1
    with open(os.path.join(result.run_dir, "skipped.json")) as f:
        found = json.load(f)
    assert list(found["shard"]) == ["train-000001.tar"] and list(found["sample"]) == ["1007"]
    assert "skipped.json" in {a.path for a in tracking.client(result.tracking_uri).list_artifacts(result.run_id)}

    debug_cfg.data.on_error, debug_cfg.train.max_failures = "fail", 1  # a bad shard is not retried
    first_bad = (r"^training failed: (shard \S+train-000001.tar is truncated or corrupt|"  # whichever is read first
                 r"sample 1007 in shard train-000002.tar cannot be decoded)")
    with pytest.raises(SslscaleError, match=first_bad):
        pretrain(debug_cfg)
    assert "retrying" not in capsys.readouterr().out
    record(fault="bad data", injected="a truncated tar shard (sha256 mismatch) and an undecodable PNG",
           outcome="on_error=skip: both left out, data/skipped_shards=1, data/skipped_samples=1, skipped.json "
                   "artifact; on_error=fail: one line naming the shard, no retry",
           lost="501 (by design: the bad shard's 500 and the bad image, listed)", repeated=0, recover_s="-")


@pytest.mark.long
def test_mlflow_away_for_30s_mid_run_loses_nothing(debug_cfg, ray_local, tmp_path, record):
    from sslscale import pretrain

    server = MlflowServer(tmp_path / "mlflow")
    os.makedirs(server.folder)
    server.start()
    outage = {}

    def take_the_server_away():
        deadline = time.time() + 300
        while time.time() < deadline and not any(checkpoint.latest(os.path.join("runs", d))
                                                 for d in (os.listdir("runs") if os.path.isdir("runs") else [])):
            time.sleep(0.2)
        server.stop()
        outage["from"] = time.time()
        time.sleep(30)
        outage["to"] = time.time()
        server.start()

    debug_cfg.tracking.uri, debug_cfg.transfer.enabled = server.uri, False
    steps = debug_cfg.train.steps = 200  # training may end before the server is back: the driver then waits for it
    debug_cfg.train.checkpoint_every = 10
    outage_thread = threading.Thread(target=take_the_server_away, daemon=True)
    outage_thread.start()
    try:
        result = pretrain(debug_cfg)
        outage_thread.join()
        points = tracking.client(server.uri).get_metric_history(result.run_id, "loss")
    finally:
        server.stop()
    assert sorted(p.step for p in points) == list(range(1, steps + 1))  # every step once, none lost
    stamps = [p.timestamp / 1000 for p in points]  # when each step ran (held metrics keep their time)
    assert any(outage["from"] < t < outage["to"] for t in stamps), "no step ran while the server was away"
    # the warning goes to rank 0's worker log (Ray forwards it to the driver's console when it gets round to it)
    worker_logs = "".join(open(p, errors="replace").read() for p in glob.glob("/tmp/ray/session_latest/logs/*.err"))
    assert worker_logs.count("is not answering") == 1
    held = sum(outage["from"] < t < outage["to"] for t in stamps)
    record(fault="MLflow away", injected="the mlflow server process stopped for 30 s after the first checkpoint",
           outcome=f"training went on; one warning; the {held} steps run meanwhile reached the server after it "
                   f"returned, every step once", lost=0, repeated=0, recover_s="next checkpoint after return")


@pytest.mark.long
def test_same_seed_gives_bitwise_identical_losses_and_records_provenance(debug_cfg, ray_local, record):
    from sslscale import pretrain

    debug_cfg.data.deterministic, debug_cfg.transfer.enabled = True, False
    runs = [pretrain(debug_cfg) for _ in range(2)]
    losses = [[v for _, v in tracking.history(r.tracking_uri, r.run_id, "loss")] for r in runs]
    assert len(losses[0]) == debug_cfg.train.steps and losses[0] == losses[1]  # float equality: bitwise
    tags = tracking.get_run(runs[0].tracking_uri, runs[0].run_id).data.tags
    assert {"sslscale.version.torch", "sslscale.version.ray", "sslscale.version.deepspeed",
            "mlflow.source.git.commit", "sslscale.git_dirty"} <= set(tags)
    record(fault="reproducibility", injected="the same run twice (seed 0, 2 workers, data.deterministic=true)",
           outcome=f"all {len(losses[0])} losses bitwise identical; versions and git revision tagged",
           lost=0, repeated=0, recover_s="-")
