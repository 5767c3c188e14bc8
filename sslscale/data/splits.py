"""Seeded, stratified subsets of a labelled split: the test split a folder corpus gets at prepare time (corpus.py,
sources/: `folder_files`, `folder_labels`, `folder_splits`, `shuffled`) and the label fractions transfer scores are measured on
(evaluation/transfer.py).

One sampler serves both. Each class's indices are put in one seeded order that depends only on the labels and the
seed, and a subset takes a prefix of each order, so with the same seed a smaller subset lies inside a larger one
(the 1% labels are among the 10%).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from sslscale.errors import SslscaleError


def stratified_pick(labels: np.ndarray, counts: np.ndarray, seed: int) -> np.ndarray:
    """Sorted indices into `labels` (int, (N,)) holding counts[c] seeded-random samples of each class c
    (counts (C,), each at most the class's size).

    >>> stratified_pick(np.array([0, 0, 1, 1, 1]), np.array([1, 2]), seed=0).tolist()  # one 0, two 1s
    [0, 2, 4]
    """
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in enumerate(counts)]
    return np.sort(np.concatenate(picked or [np.zeros(0, np.int64)])).astype(np.int64)


def folder_files(root: Path, extensions: tuple[str, ...], noun: str) -> list[Path]:
    """The files under `root` whose suffix is one of `extensions` (any case), in path order; one line naming what
    was looked for when there are none ("no images found under ...")."""
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise SslscaleError(f"no {noun} found under {root} (looked for {', '.join(extensions)}): point the source at "
                            f"a folder of {noun}")
    return files


def shuffled(parts: dict[str, list], seed: int) -> dict[str, list]:
    """Each split's items in a seeded order: in path order a class folder (or a topic's documents) would fill whole
    shards, and the stream's batches (a few shards in flight, a local shuffle buffer) would hold one or two classes
    at a time."""
    return {split: [part[i] for i in np.random.default_rng([seed, n]).permutation(len(part))]
            for n, (split, part) in enumerate(parts.items())}


def folder_labels(root: Path, files: list[Path]) -> tuple[Optional[list[str]], dict[Path, int]]:
    """Class = first-level subfolder, when every file (image, text) sits directly in one; else unlabelled."""
    parts = [p.relative_to(root).parts for p in files]
    if any(len(q) != 2 for q in parts):
        return None, {}
    classes = sorted({q[0] for q in parts})
    index = {c: i for i, c in enumerate(classes)}
    return classes, {p: index[q[0]] for p, q in zip(files, parts)}


def folder_splits(root: Path, files: list[Path], classes: Optional[list[str]], labels: dict[Path, int],
                   test_fraction: float, seed: int) -> dict[str, list[Path]]:
    """{"train": files}, unless the folder is labelled and test_fraction > 0: then a seeded, stratified "test"
    split of round(test_fraction x class size) files per class, at least 1 and leaving at least 1 to train."""
    if classes is None or not test_fraction:
        return {"train": files}
    y = np.array([labels[p] for p in files], dtype=np.int64)
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < 2:
        small = int(counts.argmin())
        raise SslscaleError(f"class folder {root / classes[small]} has {counts[small]} readable file(s) but a test "
                            "split needs at least 2 per class: add files to it, or pass --test-fraction 0")
    test = stratified_pick(y, np.clip(np.round(test_fraction * counts), 1, counts - 1).astype(np.int64), seed)
    chosen = set(test.tolist())
    return {"train": [p for i, p in enumerate(files) if i not in chosen], "test": [files[i] for i in test]}
