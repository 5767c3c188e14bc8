"""Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction").

Two views of each image go through the encoder and a projector (Linear-BN-ReLU, Linear-BN-ReLU, Linear; the paper
uses 8192-8192-8192, here cfg.proj_hidden / cfg.proj_dim). Each projector dimension is standardised over the global
batch, and the cross-correlation matrix C (d, d) of the two views is pushed towards the identity:

    loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2          (paper eq. 1, lambda = 0.0051)

The projections are gathered from every worker with gradients (dist.gather_with_grad), so every worker computes
the same loss, equal to the single-process loss on the concatenated batch; DeepSpeed's average of the workers'
gradients is then the single-process gradient (each worker's embeddings get `world` x their share, see dist.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslscale import dist
from sslscale.methods.base import HeadSection, Method, encode_pair, projector


@dataclass
class BarlowTwinsSection(HeadSection):
    """method.barlow_twins.* (paper: projector 8192-8192-8192, lambda 0.0051)."""

    lambd: float = 0.0051  # weight of the off-diagonal (redundancy reduction) term, the paper's lambda

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [*super().checks(cfg), ("lambd", self.lambd >= 0, "0 or more")]


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(N, d) -> (N, d) with each column at zero mean and unit (biased) variance: BatchNorm1d(affine=False)."""
    z = z - z.mean(dim=0)
    return z / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def barlow_twins_loss(z0: torch.Tensor, z1: torch.Tensor, lambd: float) -> tuple[torch.Tensor, ...]:
    """Barlow Twins loss over the global batch.

    z0, z1: (n, d) projections of view 0 and view 1 of this worker's n images (row i of both: the same image).
    lambd: weight of the off-diagonal (redundancy reduction) term.
    Returns (loss, on_diag, off_diag): on_diag = sum_i (1 - C_ii)^2, off_diag = sum_{i != j} C_ij^2 and
    loss = on_diag + lambd * off_diag, where C = standardize(Z0)^T standardize(Z1) / N over the global batch
    (Z: all workers' z, N rows). Every worker returns the same values.
    """
    a = standardize(dist.gather_with_grad(z0.float()))  # (N, d)
    b = standardize(dist.gather_with_grad(z1.float()))  # (N, d)
    c = a.T @ b / a.shape[0]  # (d, d) cross-correlation
    diag = torch.diagonal(c)  # (d,)
    on_diag = (1 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag + lambd * off_diag, on_diag, off_diag


class BarlowTwins(Method):
    section = BarlowTwinsSection

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        self.head = projector(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim, hidden_layers=2)

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        h0, z0, z1 = encode_pair(self.encoder, self.head, batch)
        loss, on_diag, off_diag = barlow_twins_loss(z0, z1, self.cfg.lambd)
        return {"loss": loss, "on_diag": on_diag.detach(), "off_diag": off_diag.detach(), "embeddings": h0.detach()}
