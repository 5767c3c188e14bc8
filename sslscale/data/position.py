"""Which sample ids a run consumed in which epoch: exact, and sized by the shards in flight, not by the samples.

The stream's position is state (docs/design.md): a resume skips exactly the (epoch, id) pairs that completed steps
consumed. Sample ids are 0..N-1 and every shard holds a contiguous id range (corpus.prepare), and the stream reads
an epoch shard by shard, so an epoch's consumed ids form a few long runs. A `Position` keeps, per epoch, the sorted,
disjoint, non-adjacent half-open ranges [lo, hi) of consumed ids (an int64 array of shape (k, 2), merged on every
insert), and a watermark `done_below`: every epoch below it consumed all N ids of the split (known when the
Position is told N, `samples`). So 100 finished epochs cost one integer, a finished shard is part of one range,
and only the shards in flight keep fragments (the rows waiting in the workers' shuffle buffers and in the split's
queue are holes). Nothing is approximated: the set of (epoch, id) pairs is the one a list of ids would hold.

One rank alone sees interleaved blocks (Ray's streaming split hands each block to whichever worker asks), so its
own ranges are broken at every block; the union over ranks (`merge`) closes them up again.

JSON (`to_json`): {"version": 1, "samples": N or null, "done_below": E, "runs": {"<epoch>": [gap, length, ...]}},
each epoch's ranges as alternating lengths of unconsumed and consumed ids counted from id 0 (a run-length code:
fragments are small numbers). `load` also reads the format before it, {"<epoch>": [ids]} (`from_legacy`).

    >>> pos = Position(samples=6)
    >>> pos.add(0, np.array([3, 1, 2, 2]))
    >>> pos.contains(0, np.array([1, 4])).tolist(), pos.count(0), pos.ranges(0).tolist()
    ([True, False], 3, [[1, 4]])
    >>> pos.add(0, np.array([0, 4, 5]))  # epoch 0 is now complete: it collapses into the watermark
    >>> pos.done_below, pos.to_json()["runs"]
    (1, {})
"""
from __future__ import annotations

from typing import Any

import numpy as np

VERSION = 1
EMPTY = np.zeros((0, 2), np.int64)


def runs_of(ids: Any) -> np.ndarray:
    """The (k, 2) ranges that cover exactly the distinct ids given (any order, repeats allowed)."""
    ids = np.unique(np.asarray(ids, np.int64).ravel())  # sorted, distinct
    if not len(ids):
        return EMPTY
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1  # where a run of consecutive ids starts, after the first
    lo = ids[np.r_[0, breaks]]
    hi = ids[np.r_[breaks - 1, len(ids) - 1]] + 1
    return np.stack([lo, hi], axis=1)


def union(*parts: np.ndarray) -> np.ndarray:
    """The ranges of the union of several range arrays: sorted, overlapping and touching ranges joined."""
    r = np.concatenate([EMPTY, *parts])
    if len(r) < 2:
        return r
    r = r[np.argsort(r[:, 0], kind="stable")]
    reach = np.maximum.accumulate(r[:, 1])  # (k,): the furthest end of the ranges up to each one
    first = np.flatnonzero(np.r_[True, r[1:, 0] > reach[:-1]])  # a range after a gap starts a new group
    last = np.r_[first[1:] - 1, len(r) - 1]
    return np.stack([r[first, 0], reach[last]], axis=1)


def inside(ranges: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Bool mask: which ids fall in one of the ranges."""
    ids = np.asarray(ids, np.int64)
    if not len(ranges):
        return np.zeros(ids.shape, bool)
    i = np.searchsorted(ranges[:, 0], ids, side="right") - 1  # the range starting at or before each id
    return (i >= 0) & (ids < ranges[np.maximum(i, 0), 1])


def encode(ranges: np.ndarray) -> list[int]:
    """Ranges as alternating gap and length runs from 0: [[2, 5], [7, 8]] -> [2, 3, 2, 1]."""
    return np.diff(ranges.ravel(), prepend=0).tolist()


def decode(runs: list[int]) -> np.ndarray:
    """The inverse of `encode`; ValueError for anything `encode` cannot have written."""
    runs = np.array(runs)
    if not runs.size:
        return EMPTY
    if runs.ndim != 1 or runs.dtype.kind != "i" or len(runs) % 2 or runs[0] < 0 or (runs[1:] <= 0).any():
        raise ValueError("runs must be integers alternating positive gap and length counts, the first gap >= 0")
    return np.cumsum(runs, dtype=np.int64).reshape(-1, 2)


class Position:
    """The consumed (epoch, id) pairs of a run; `samples` (N, the split's size) lets finished epochs collapse into
    the watermark `done_below`. Ids must lie in 0..N-1 when N is known.

    `add` holds the ids it is given and merges them into the ranges in bulk (once they outnumber the ranges), so
    recording a step costs the same however fragmented the ranges are; every question merges first."""

    HOLD = 4096  # ids an epoch may hold unmerged at least

    def __init__(self, samples: int | None = None, done_below: int = 0):
        if samples is not None and samples < 1:
            raise ValueError(f"samples must be a positive split size or None, not {samples}")
        if done_below and samples is None:
            raise ValueError("a watermark (done_below > 0) needs the split size (samples)")
        self.samples = None if samples is None else int(samples)
        self._done = int(done_below)
        self._ranges: dict[int, np.ndarray] = {}
        self._held: dict[int, list[np.ndarray]] = {}  # ids added but not merged yet, per epoch

    # ------------------------------------------------------------ updating

    def add(self, epoch: int, ids: Any) -> None:
        """Mark ids (an int array, any order, repeats allowed) consumed in `epoch`."""
        ids = np.asarray(ids, np.int64).ravel()
        if not ids.size or epoch < self._done:
            return
        if ids.min() < 0:
            raise ValueError(f"sample ids are never negative, got {ids.min()}")
        if self.samples is not None and ids.max() >= self.samples:
            raise ValueError(f"sample id {ids.max()} is beyond a split of {self.samples}")
        held = self._held.setdefault(int(epoch), [])
        held.append(ids)
        if sum(map(len, held)) > max(self.HOLD, len(self._ranges.get(int(epoch), EMPTY))):
            self._merge_held()

    def record(self, epochs: Any, ids: Any) -> None:
        """Mark a batch's rows consumed: ids[i] in epochs[i] (a batch may straddle two epochs)."""
        epochs, ids = np.asarray(epochs, np.int64).ravel(), np.asarray(ids, np.int64).ravel()
        for epoch in np.unique(epochs):
            self.add(int(epoch), ids[epochs == epoch])

    def merge(self, other: Position) -> Position:
        """Union `other` into this one (ranks' positions into the run's); returns self."""
        if None not in (self.samples, other.samples) and self.samples != other.samples:
            raise ValueError(f"positions of splits of different sizes ({self.samples}, {other.samples})")
        self.samples = self.samples if self.samples is not None else other.samples
        self._done = max(self.done_below, other.done_below)  # both merge what they hold first
        for epoch, ranges in other._ranges.items():
            self._put(epoch, ranges)
        self._settle()
        return self

    def _merge_held(self) -> None:
        if not self._held:
            return
        for epoch, held in self._held.items():
            self._put(epoch, runs_of(np.concatenate(held)))
        self._held.clear()
        self._settle()

    def _put(self, epoch: int, ranges: np.ndarray) -> None:
        if epoch >= self._done and len(ranges):
            self._ranges[epoch] = union(self._ranges.get(epoch, EMPTY), ranges)

    def _settle(self) -> None:
        """Check the ids against the split's size, advance the watermark over complete epochs, forget the ranges
        below it."""
        for epoch, ranges in self._ranges.items():
            if self.samples is not None and ranges[-1, 1] > self.samples:
                raise ValueError(f"epoch {epoch} holds sample ids up to {ranges[-1, 1] - 1}, beyond a split of "
                                 f"{self.samples}")
        while self.samples is not None and self._full(self._done):
            self._done += 1
        for epoch in [e for e in self._ranges if e < self._done]:
            del self._ranges[epoch]

    def _full(self, epoch: int) -> bool:
        ranges = self._ranges.get(epoch, EMPTY)
        return len(ranges) == 1 and ranges[0, 0] == 0 and ranges[0, 1] == self.samples

    # ------------------------------------------------------------ asking (each merges what add holds first)

    @property
    def done_below(self) -> int:
        """The watermark: every epoch below it consumed all `samples` ids."""
        self._merge_held()
        return self._done

    def _open(self) -> dict[int, np.ndarray]:
        """The ranges of the epochs at or above the watermark, everything held merged in."""
        self._merge_held()
        return self._ranges

    def ranges(self, epoch: int) -> np.ndarray:
        """The consumed ranges of `epoch`, (k, 2) int64 (a copy)."""
        if epoch < self.done_below:
            return np.array([[0, self.samples]], np.int64)
        return self._open().get(epoch, EMPTY).copy()

    def epochs(self) -> list[int]:
        """The epochs at or above the watermark with anything consumed, in order."""
        return sorted(self._open())

    def contains(self, epoch: int, ids: Any) -> np.ndarray:
        """Bool mask: which ids were consumed in `epoch` (the stream's filter)."""
        ids = np.asarray(ids, np.int64)
        if epoch < self.done_below:
            return np.ones(ids.shape, bool)
        return inside(self._open().get(epoch, EMPTY), ids)

    def covers(self, epoch: int, lo: Any, hi: Any) -> np.ndarray:
        """Bool mask: which id ranges [lo, hi) (e.g. shards, from the manifest) `epoch` consumed whole, so the
        stream's plan can leave them out unread."""
        lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        ranges = self.ranges(epoch)
        if not len(ranges):
            return hi <= lo
        i = np.searchsorted(ranges[:, 0], lo, side="right") - 1
        return (hi <= lo) | ((i >= 0) & (ranges[np.maximum(i, 0), 1] >= hi))

    def count(self, epoch: int) -> int:
        """How many ids `epoch` consumed."""
        ranges = self.ranges(epoch)
        return int((ranges[:, 1] - ranges[:, 0]).sum())

    def complete(self, epoch: int, n: int | None = None) -> bool:
        """Whether `epoch` consumed every id of 0..n-1 (n defaults to `samples`)."""
        n = self.samples if n is None else n
        if n is None:
            raise ValueError("complete() needs the split size: pass n or build the Position with samples")
        ranges = self.ranges(epoch)
        return len(ranges) == 1 and ranges[0, 0] <= 0 and ranges[0, 1] >= n

    def __len__(self) -> int:
        """How many (epoch, id) pairs it holds."""
        done = self.done_below * (self.samples or 0)
        return done + sum(int((r[:, 1] - r[:, 0]).sum()) for r in self._open().values())

    def overlap(self, other: Position) -> int:
        """How many (epoch, id) pairs both hold: ids consumed twice, when the two are what different ranks or
        different checkpoint intervals consumed."""
        both = Position(self.samples if self.samples is not None else other.samples).merge(self).merge(other)
        return len(self) + len(other) - len(both)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Position) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return (f"Position(samples={self.samples}, done_below={self.done_below}, "
                f"open={ {e: len(r) for e, r in sorted(self._open().items())} })")

    # ------------------------------------------------------------ files and messages

    def to_json(self) -> dict:
        """A plain JSON-able dict (see the module docstring)."""
        return {"version": VERSION, "samples": self.samples, "done_below": self.done_below,
                "runs": {str(e): encode(r) for e, r in sorted(self._open().items())}}

    @classmethod
    def from_json(cls, data: dict) -> Position:
        """The Position `to_json` wrote; ValueError naming what is wrong otherwise."""
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a version-{VERSION} position (version {data.get('version')!r})"
                             if isinstance(data, dict) else "a position must be a JSON object")
        try:
            pos = cls(data["samples"], data["done_below"])
            for epoch, runs in data["runs"].items():  # _put, not add: ranges need no sorting
                pos._put(int(epoch), decode(runs))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"a malformed position ({type(e).__name__}: {e})") from None
        pos._settle()
        return pos

    @classmethod
    def from_legacy(cls, data: dict, samples: int | None = None) -> Position:
        """The Position of the earlier format, {epoch (str or int): [sample ids]}."""
        pos = cls(samples)
        for epoch, ids in data.items():
            pos.add(int(epoch), np.asarray(ids, np.int64))
        return pos

    @classmethod
    def load(cls, data: dict, samples: int | None = None) -> Position:
        """Either format; `samples`, when given, must match the one the file names (else the corpus changed)."""
        pos = cls.from_json(data) if "version" in data else cls.from_legacy(data, samples)
        return pos.merge(cls(samples))

    def to_array(self) -> np.ndarray:
        """(k, 3) int64 rows (epoch, lo, hi), an epoch below the watermark as one row (epoch, 0, N): what ranks
        exchange in a tensor all-gather (`from_array` of the concatenated rows is their union)."""
        rows = [np.array([[e, 0, self.samples]], np.int64) for e in range(self.done_below)]
        rows += [np.column_stack([np.full(len(r), e, np.int64), r]) for e, r in sorted(self._open().items())]
        return np.concatenate([np.zeros((0, 3), np.int64), *rows])

    @classmethod
    def from_array(cls, rows: np.ndarray, samples: int | None = None) -> Position:
        """The Position of `to_array` rows (several ranks' rows concatenated: their union)."""
        rows = np.asarray(rows, np.int64).reshape(-1, 3)
        pos = cls(samples)
        order = np.argsort(rows[:, 0], kind="stable")
        rows = rows[order]
        epochs, starts = np.unique(rows[:, 0], return_index=True)
        for epoch, part in zip(epochs.tolist(), np.split(rows[:, 1:], starts[1:])):
            pos._put(epoch, union(part))
        pos._settle()
        return pos
