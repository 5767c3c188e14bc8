"""Faults injected into real runs (Ray Train, 2 workers, DeepSpeed, Ray Data, an sqlite MLflow store, real files).

Each test proves one guarantee of docs/reliability.md; slow (tens of seconds each), run by `make test`."""
import os

import pytest
import torch

from sslscale import checkpoint, faults, tracking
from sslscale.errors import SslscaleError

pytestmark = pytest.mark.slow


@pytest.fixture
def nan_at_4_and_5(monkeypatch):
    """Rank 0's loss is NaN at steps 4 and 5 (set before Ray starts, so every worker inherits it)."""
    monkeypatch.setenv(faults.ENV, "nan_loss@4-5")


def test_nonfinite_steps_are_skipped_then_too_many_stop_the_run(nan_at_4_and_5, debug_cfg, ray_local):
    from sslscale import pretrain

    debug_cfg.train.steps, debug_cfg.transfer.enabled, debug_cfg.train.max_bad_steps = 8, False, 3
    result = pretrain(debug_cfg)
    uri, run_id = result.tracking_uri, result.run_id
    assert [s for s, v in tracking.history(uri, run_id, "skipped") if v] == [4, 5]  # only rank 0 was poisoned
    assert [s for s, _ in tracking.history(uri, run_id, "loss")] == [1, 2, 3, 6, 7, 8]
    assert tracking.get_run(uri, run_id).info.status == "FINISHED"

    debug_cfg.train.max_bad_steps = 2
    with pytest.raises(SslscaleError, match=r"2 steps in a row \(up to step 5\).*checkpoint of step 3 is intact"):
        pretrain(debug_cfg)
    run_dir = max((os.path.join("runs", d) for d in os.listdir("runs")), key=os.path.getmtime)
    last = checkpoint.latest(run_dir)  # verified against its checksums
    assert checkpoint.read_state(last)["step"] == 3
    weights = torch.load(os.path.join(last, "ds", "mp_rank_00_model_states.pt"), weights_only=False)["module"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
