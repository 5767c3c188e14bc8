"""The worker loop's own decisions, without Ray: when bad steps stop a run, and what the message says."""
import pytest

from sslscale.config import Config
from sslscale.errors import SslscaleError
from sslscale.training.train import _check_bad_steps


def test_k_bad_steps_in_a_row_stop_the_run_naming_the_intact_checkpoint():
    cfg = Config().override(["train.max_bad_steps=2"])
    _check_bad_steps(1, cfg, step=4, last_saved=3)  # one is skipped, not fatal
    with pytest.raises(SslscaleError, match=r"2 steps in a row \(up to step 5\).*checkpoint of step 3 is intact: "
                                            r"--resume it with a lower optim.lr"):
        _check_bad_steps(2, cfg, step=5, last_saved=3)
    with pytest.raises(SslscaleError, match="no checkpoint was written yet: start again with a lower optim.lr"):
        _check_bad_steps(2, cfg, step=2, last_saved=0)
