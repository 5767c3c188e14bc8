"""Label-free health metrics of embeddings, the same for every method, so collapse shows without labels.

- rankme: the effective rank of the (n, D) embedding matrix (Garrido et al. 2023, RankMe): exp of the entropy of
  its singular values normalised to sum 1. Between 1 (collapse to a line) and min(n, D).
- std: mean over dimensions of the per-dimension std across the batch of the L2-normalised embeddings: about
  1/sqrt(D) when the embeddings spread over the sphere, 0 at complete collapse.
- spectrum: the top-k eigenvalues of the covariance of the L2-normalised embeddings of a fixed probe set
  (probe.py), logged every train.health_every steps as `spectrum/eig_01` .. `spectrum/eig_<k>` (rank-ordered)
  and `spectrum/erank`. Joint-embedding methods learn these eigen-directions one at a time, in steps (Simon et
  al. 2023, "On the Stepwise Nature of Self-Supervised Learning"): plotted against the step (plots.spectrum_plot)
  the eigenvalues rise one after another.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rankme(emb: torch.Tensor, eps: float = 1e-7) -> float:
    s = torch.linalg.svdvals(emb.float())
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def normalized_std(emb: torch.Tensor) -> float:
    return float(F.normalize(emb.float(), dim=1).std(dim=0).mean())


HEALTH_KEYS = ("health/rankme", "health/std")


def health_metrics(emb: torch.Tensor) -> dict[str, float]:
    return dict(zip(HEALTH_KEYS, (rankme(emb), normalized_std(emb))))


def spectrum(emb: torch.Tensor, k: int) -> list[float]:
    """The top-k eigenvalues, largest first, of the covariance of the L2-normalised embeddings.

    emb: (n, D) embeddings. Rows are normalised to unit length, centred, and C = Zc^T Zc / n (D, D) is
    diagonalised in float64; round-off negatives become 0, and 0.0 pads the list to k when D < k. The eigenvalues
    sum to the mean squared distance of the normalised rows from their mean (at most 1).

    Example: spectrum(torch.eye(3), 4) is [1/3, 1/3, 0.0, 0.0] (to round-off): three orthogonal unit rows,
    whose centred covariance has rank 2, padded to k=4.
    """
    z = F.normalize(emb.detach().double(), dim=1)  # (n, D)
    zc = z - z.mean(dim=0, keepdim=True)  # (n, D)
    eigs = torch.linalg.eigvalsh(zc.T @ zc / len(zc)).flip(0).clamp_min(0.0)  # (D,) largest first
    return eigs[:k].tolist() + [0.0] * max(0, k - len(eigs))


def effective_rank(eigs: list[float]) -> float:
    """exp of the entropy of the eigenvalues normalised to sum 1 (zeros contribute nothing): the number of equal
    eigenvalues that would spread as evenly; 0.0 when all are 0."""
    total = sum(eigs)
    p = [e / total for e in eigs if e > 0] if total > 0 else []
    return math.exp(-sum(q * math.log(q) for q in p)) if p else 0.0


def spectrum_metrics(eigs: list[float]) -> dict[str, float]:
    """{`spectrum/eig_01`: largest, ..., `spectrum/eig_<k>`: k-th largest, `spectrum/erank`: effective_rank}."""
    return {**{f"spectrum/eig_{i:02d}": float(e) for i, e in enumerate(eigs, 1)},
            "spectrum/erank": effective_rank(eigs)}
