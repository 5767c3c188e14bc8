"""Label-free health metrics of a batch of embeddings, the same for every method, so collapse shows without labels.

- rankme: the effective rank of the (n, D) embedding matrix (Garrido et al. 2023, RankMe): exp of the entropy of
  its singular values normalised to sum 1. Between 1 (collapse to a line) and min(n, D).
- std: mean over dimensions of the per-dimension std across the batch of the L2-normalised embeddings: about
  1/sqrt(D) when the embeddings spread over the sphere, 0 at complete collapse.
"""
from __future__ import annotations

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
