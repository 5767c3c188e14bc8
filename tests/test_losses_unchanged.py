"""Losses are unchanged: every registered method's first optimizer steps give the losses recorded in
tests/golden/losses.json (before the declared-modalities refactor), within rtol 1e-5. The harness and how the
record was made: tests/golden_losses.py (one plain process: the stream's own tasks on real shards, the real
DeepSpeed engine, fp32 on the CPU; ~1 s a method)."""
import json
import os

import pytest

from golden_losses import GOLDEN, RECORD, STEPS, losses, methods, overrides, prepare_corpora

RECORDED = json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def corpora(data_root, tmp_path_factory) -> dict:
    """The session's digits corpus and the tiny text corpus."""
    return prepare_corpora(tmp_path_factory.mktemp("golden"), digits=os.path.join(data_root, "digits"))


def test_every_registered_method_has_recorded_losses():
    assert sorted(RECORDED["losses"]) == sorted(methods()), (
        f"the registered methods and those in {GOLDEN.name} differ: record a new method's losses with {RECORD}")


@pytest.mark.parametrize("method", sorted(methods()))
def test_losses_are_unchanged(method, corpora):
    kind = methods()[method]
    assert overrides(method, kind) == RECORDED["overrides"].get(method), (
        f"the harness runs {method} with other overrides than it was recorded with: restore them, or re-record "
        f"with {RECORD}")
    got = losses(method, corpora)
    assert got == pytest.approx(RECORDED["losses"][method], rel=1e-5), (
        f"{method}'s losses for its first {STEPS} steps changed: {got}, recorded {RECORDED['losses'][method]} "
        f"(torch {RECORDED['torch']}, deepspeed {RECORDED['deepspeed']}). If the change is intended, re-record "
        f"with {RECORD} and say why in the commit")
