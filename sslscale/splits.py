"""Seeded, stratified subsets of a labelled split: the test split a folder corpus gets at prepare time (corpus.py)
and the label fractions transfer scores are measured on (transfer.py).

One sampler serves both. Each class's indices are put in one seeded order that depends only on the labels and the
seed, and a subset takes a prefix of each order, so with the same seed a smaller subset lies inside a larger one
(the 1% labels are among the 10%).
"""
from __future__ import annotations

import numpy as np


def stratified_pick(labels: np.ndarray, counts: np.ndarray, seed: int) -> np.ndarray:
    """Sorted indices into `labels` (int, (N,)) holding counts[c] seeded-random samples of each class c
    (counts (C,), each at most the class's size).

    >>> stratified_pick(np.array([0, 0, 1, 1, 1]), np.array([1, 2]), seed=0).tolist()  # one 0, two 1s
    [0, 2, 4]
    """
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in enumerate(counts)]
    return np.sort(np.concatenate(picked or [np.zeros(0, np.int64)])).astype(np.int64)
