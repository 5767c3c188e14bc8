"""sslscale.data.position against a plain set of (epoch, id) pairs: adds, merges of interleaved ranks, the stream's
filter, counts, the watermark, JSON and legacy round trips; its size; and the positions benchmark's smoke run."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sslscale.data.position import Position, decode, encode, union

SEEDS = range(6)
ROOT = pathlib.Path(__file__).parents[1]


def _check(pos: Position, ref: dict[int, set], n: int, epochs: int) -> None:
    """pos holds exactly the pairs in ref, over ids 0..n-1 and epochs 0..epochs-1, in every way it can be asked."""
    ids = np.arange(n)
    for epoch in range(epochs):
        want = np.isin(ids, list(ref.get(epoch, ())))
        assert (pos.contains(epoch, ids) == want).all()
        assert pos.count(epoch) == len(ref.get(epoch, ()))
        r = pos.ranges(epoch)
        assert (r[:, 0] < r[:, 1]).all() and (r[1:, 0] > r[:-1, 1]).all()  # non-empty, sorted, apart
        assert pos.complete(epoch, n) == (len(ref.get(epoch, ())) == n)
    assert Position.from_json(json.loads(json.dumps(pos.to_json()))) == pos


def _random_pairs(rng, n: int, epochs: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k (epoch, id) rows, repeats included, favouring runs of neighbouring ids as shards do."""
    epoch = rng.integers(0, epochs, k)
    start = rng.integers(0, n, k)
    ids = np.minimum(start + np.where(rng.random(k) < 0.5, rng.integers(0, 3, k), 0), n - 1)
    return epoch, ids


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("samples", [None, "n"])
@pytest.mark.parametrize("hold", [3, Position.HOLD])  # ids merged at once, or held until a question
def test_random_adds_match_a_set(seed, samples, hold, monkeypatch):
    monkeypatch.setattr(Position, "HOLD", hold)
    rng = np.random.default_rng(seed)
    n, epochs = int(rng.integers(1, 300)), int(rng.integers(1, 5))
    pos, ref = Position(n if samples else None), {}
    for step in range(40):
        epoch, ids = _random_pairs(rng, n, epochs, int(rng.integers(0, 60)))
        pos.record(epoch, ids)
        for e, i in zip(epoch.tolist(), ids.tolist()):
            ref.setdefault(e, set()).add(i)
        if step % 4 == 3:  # some adds pile up between questions
            _check(pos, ref, n, epochs)


@pytest.mark.parametrize("seed", SEEDS)
def test_ranks_interleaving_merge_to_the_union(seed):
    """Blocks of a shuffled stream go to whichever of 3 ranks asks; the union of their positions is the stream's."""
    rng = np.random.default_rng(seed)
    n, epochs = 500, 3
    stream = np.concatenate([np.column_stack([np.full(n, e), rng.permutation(n)]) for e in range(epochs)])
    stream = stream[: int(rng.integers(1, len(stream)))]  # stopped somewhere in an epoch
    ranks = [Position(n) for _ in range(3)]
    for block in np.array_split(stream, len(stream) // 7 + 1):
        ranks[rng.integers(0, 3)].record(block[:, 0], block[:, 1])
    ref = {}
    for e, i in stream.tolist():
        ref.setdefault(e, set()).add(i)
    merged = Position(n)
    for r in ranks:
        merged.merge(r)
    _check(merged, ref, n, epochs)
    assert len(merged) == len(stream) == sum(map(len, ranks))
    assert all(a.overlap(b) == 0 for a in ranks for b in ranks if a is not b)  # no id went to two ranks
    assert ranks[0].overlap(merged) == len(ranks[0])
    assert Position(n).merge(ranks[2]).merge(ranks[0]).merge(ranks[1]) == merged  # any order
    assert Position.from_array(np.concatenate([r.to_array() for r in ranks]), n) == merged
    assert merged.done_below == len(stream) // n  # the epochs every rank's share completes


@pytest.mark.parametrize("seed", SEEDS)
def test_legacy_files_resume_to_the_same_position(seed):
    rng = np.random.default_rng(seed)
    n = 200
    legacy = {str(e): rng.integers(0, n, int(rng.integers(0, 300))).tolist() for e in range(3)}
    ref = {int(e): set(ids) for e, ids in legacy.items()}
    pos = Position.from_legacy(legacy, n)
    _check(pos, ref, n, 3)
    assert Position.load(legacy, n) == pos == Position.load(pos.to_json(), n)
    assert Position.from_legacy({int(e): ids for e, ids in legacy.items()}, n) == pos  # read_positions' int keys


@pytest.mark.parametrize("seed", SEEDS)
def test_covers_tells_which_shards_the_plan_can_drop(seed):
    rng = np.random.default_rng(seed)
    n, size = 1000, 100
    ids = rng.choice(n, int(rng.integers(0, n)), replace=False)
    ids = np.concatenate([ids, np.arange(200, 300)])  # shard 2 surely whole
    pos = Position(n)
    pos.add(4, ids)
    lo = np.arange(0, n, size)
    want = [set(range(a, a + size)) <= set(ids.tolist()) for a in lo]
    assert pos.covers(4, lo, lo + size).tolist() == want and want[2]
    assert not pos.covers(5, lo, lo + size).any() and pos.covers(5, 10, 10)  # nothing there; empty range is


def test_finished_epochs_collapse_into_the_watermark():
    n = 50
    pos = Position(n)
    pos.add(0, np.arange(n)[::-1])
    pos.add(1, np.arange(n))
    pos.add(3, np.arange(n))  # epoch 3 finished before epoch 2: kept as one range until 2 is done
    pos.add(2, np.arange(10))
    assert (pos.done_below, pos.epochs(), pos.ranges(3).tolist()) == (2, [2, 3], [[0, n]])
    assert pos.contains(0, np.array([0, 49])).all() and pos.count(1) == n and pos.complete(1)
    assert pos.to_json() == {"version": 1, "samples": n, "done_below": 2, "runs": {"2": [0, 10], "3": [0, n]}}
    pos.add(2, np.arange(10, n))
    assert (pos.done_below, pos.epochs(), pos.to_json()["runs"]) == (4, [], {})
    pos.add(1, np.arange(5))  # an old epoch again: nothing changes
    assert pos.done_below == 4 and Position.from_json(pos.to_json()) == pos
    assert Position(n).merge(pos).done_below == 4 and Position.from_array(pos.to_array(), n) == pos


def test_without_the_split_size_epochs_stay_ranges():
    pos = Position()
    pos.add(0, np.arange(30))
    assert pos.done_below == 0 and pos.complete(0, 30) and not pos.complete(0, 31)
    with pytest.raises(ValueError, match="split size"):
        pos.complete(0)
    assert Position.load(pos.to_json(), 30).done_below == 1  # told N on loading, it collapses


def test_empty_cases():
    pos = Position(10)
    pos.add(0, np.array([], np.int64))
    pos.record(np.array([], np.int64), np.array([], np.int64))
    assert pos.epochs() == [] and pos.count(0) == 0 and not pos.contains(0, np.arange(10)).any()
    assert pos.contains(0, np.array([], np.int64)).shape == (0,) and pos.ranges(7).shape == (0, 2)
    assert pos.to_json() == {"version": 1, "samples": 10, "done_below": 0, "runs": {}}
    assert Position.from_json(pos.to_json()) == pos == Position.from_legacy({}, 10) == Position.from_array(
        pos.to_array(), 10)
    assert union().shape == (0, 2) and decode(encode(union())).shape == (0, 2)


@pytest.mark.parametrize("seed", SEEDS)
def test_overlap_counts_pairs_held_twice(seed):
    rng = np.random.default_rng(seed)
    n = 100
    a, b = Position(n), Position(n)
    ref_a, ref_b = set(), set()
    for pos, ref in ((a, ref_a), (b, ref_b)):
        epoch, ids = _random_pairs(rng, n, 3, 150)
        pos.record(epoch, ids)
        ref.update(zip(epoch.tolist(), ids.tolist()))
    if seed % 2:
        a.add(0, np.arange(n))  # a whole epoch, collapsed into a's watermark
        ref_a.update((0, i) for i in range(n))
    assert (len(a), len(b), a.overlap(b), b.overlap(a)) == (len(ref_a), len(ref_b), len(ref_a & ref_b),
                                                             len(ref_a & ref_b))


def test_duplicates_count_once():
    pos = Position()
    for _ in range(3):
        pos.add(0, np.array([5, 5, 6, 6, 7, 9, 9]))
    assert pos.count(0) == 4 and pos.ranges(0).tolist() == [[5, 8], [9, 10]]
    assert pos.to_json()["runs"] == {"0": [5, 3, 1, 1]}


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="negative"):
        Position().add(0, np.array([-1]))
    with pytest.raises(ValueError, match="beyond a split of 10"):
        Position(10).add(0, np.array([10]))
    with pytest.raises(ValueError, match="beyond a split of 10"):
        Position(10).merge(Position.from_legacy({"0": [3, 12]}))
    with pytest.raises(ValueError, match="different sizes"):
        Position(10).merge(Position(11))
    with pytest.raises(ValueError, match="different sizes"):
        Position.load({"version": 1, "samples": 10, "done_below": 0, "runs": {}}, 12)
    with pytest.raises(ValueError, match="version-1"):
        Position.from_json({"version": 2, "runs": {}})
    for runs in ([1], [1, 0], [-1, 2], [1.5, 2], ["1", "2"]):
        with pytest.raises(ValueError, match="runs must be"):
            Position.from_json({"version": 1, "samples": None, "done_below": 0, "runs": {"0": runs}})
    with pytest.raises(ValueError, match="malformed"):
        Position.from_json({"version": 1, "samples": None})
    with pytest.raises(ValueError, match="needs the split size"):
        Position(None, done_below=3)


def test_size_grows_with_shards_in_flight_not_samples():
    """10 shards of 1,000 ids consumed whole in shuffled order (blocks of 100 to 2 ranks), half of an 11th in
    flight (5 of its 10 blocks, and the buffer's holes in a 6th): a few hundred bytes against 10,500 ids."""
    rng = np.random.default_rng(0)
    n, shard, block = 20_000, 1_000, 100
    blocks = [np.arange(a, a + block) for a in range(0, 10 * shard, block)]
    *whole, last = 10 * shard + block * rng.permutation(10)[:6]  # the 11th shard's blocks read so far
    open_blocks = [np.arange(a, a + block) for a in whole]
    partial = np.delete(np.arange(last, last + block), rng.choice(block, 20, replace=False))
    ranks = [Position(n), Position(n)]
    for i in rng.permutation(len(blocks) + len(open_blocks)):
        ids = (blocks + open_blocks)[i]
        ranks[rng.integers(0, 2)].add(0, rng.permutation(ids))
    ranks[0].add(0, partial[:40])
    ranks[1].add(0, partial[40:])
    union_ = Position(n).merge(ranks[0]).merge(ranks[1])
    size = len(json.dumps(union_.to_json()))
    legacy = len(json.dumps({"0": np.concatenate([*blocks, *open_blocks, partial]).tolist()}))
    assert size < 400 < 60_000 < legacy, (size, legacy)
    assert union_.count(0) == 10 * shard + 5 * block + len(partial)


def test_benchmark_quick_run(tmp_path):
    out = tmp_path / "positions.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "positions.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["consumed"] for r in rows] == [10**5, 10**6]
    for r in rows:
        assert r["new"]["bytes"] * 10 < r["old"]["bytes"] and not r["old"]["estimated"]
        assert r["new"]["identical"]  # the new resume skips exactly the old one's pairs
    assert "| consumed ids |" in done.stdout
