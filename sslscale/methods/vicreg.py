"""VICReg (Bardes, Ponce and LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning").

Two views of each image go through the encoder and an expander (Linear-BN-ReLU, Linear-BN-ReLU, Linear; the paper
uses 8192-8192-8192, here cfg.proj_hidden / cfg.proj_dim). With Z0, Z1 the (N, d) expansions of the global batch:

    invariance  s = mean_{b,k} (Z0_bk - Z1_bk)^2                                   (MSE)
    variance    v = mean_k relu(1 - sqrt(Var(Z_k) + 1e-4)), averaged over the two views (gamma = 1)
    covariance  c = sum_{i != j} Cov(Z)_ij^2 / d, summed over the two views
    loss = 25 s + 25 v + 1 c                                                   (paper defaults, cfg.*_coeff)

Var and Cov use N - 1 like the official code. The expansions are gathered from every worker with gradients
(dist.gather_with_grad), so every worker computes the same loss, equal to the single-process loss on the
concatenated batch; DeepSpeed's average of the workers' gradients is then the single-process gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale import dist
from sslscale.methods.base import HeadSection, Method, encode_pair, projector


@dataclass
class VICRegSection(HeadSection):
    """method.vicreg.* (paper: projector 8192-8192-8192; coefficients 25, 25, 1, named as in its code)."""

    sim_coeff: float = 25.0  # weight of the invariance (MSE) term
    std_coeff: float = 25.0  # weight of the variance (std hinge) term
    cov_coeff: float = 1.0  # weight of the covariance term

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [*super().checks(cfg), *[(key, getattr(self, key) >= 0, "0 or more")
                                        for key in ("sim_coeff", "std_coeff", "cov_coeff")]]


def _variance(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Mean over dimensions of the hinge relu(1 - std); z: (N, d) centred."""
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances / d; z: (N, d) centred."""
    cov = z.T @ z / (z.shape[0] - 1)  # (d, d)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / z.shape[1]


def vicreg_loss(z0: torch.Tensor, z1: torch.Tensor, sim: float = 25.0, std: float = 25.0,
                cov: float = 1.0) -> tuple[torch.Tensor, ...]:
    """VICReg loss over the global batch.

    z0, z1: (n, d) expansions of view 0 and view 1 of this worker's n images (row i of both: the same image).
    sim, std, cov: weights of the invariance, variance and covariance terms.
    Returns (loss, invariance, variance, covariance), the terms unweighted. Every worker returns the same values.
    """
    a, b = dist.gather_with_grad(z0.float()), dist.gather_with_grad(z1.float())  # (N, d) each
    invariance = F.mse_loss(a, b)
    a, b = a - a.mean(dim=0), b - b.mean(dim=0)
    variance = (_variance(a) + _variance(b)) / 2
    covariance = _covariance(a) + _covariance(b)
    return sim * invariance + std * variance + cov * covariance, invariance, variance, covariance


class VICReg(Method):
    section = VICRegSection

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        self.head = projector(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim, hidden_layers=2)

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        h0, z0, z1 = encode_pair(self.encoder, self.head, batch)
        cfg = self.cfg
        loss, inv, var, cov = vicreg_loss(z0, z1, cfg.sim_coeff, cfg.std_coeff, cfg.cov_coeff)
        return {"loss": loss, "invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach(),
                "embeddings": h0.detach()}
