"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning").

An online network (encoder, projector, predictor) predicts the projection that a target network, an exponential
moving average of the online encoder and projector (MomentumMethod), gives of the other view of the same image:

    loss = (2 - 2 cos(p(v0), z'(v1))) + (2 - 2 cos(p(v1), z'(v0)))          (paper eq. 2, symmetrised)

averaged over the images; the targets z' carry no gradient. Projector and predictor are Linear-BN-ReLU-Linear
(paper: 4096 hidden, 256 out; here cfg.proj_hidden, cfg.proj_dim). The target momentum rises from cfg.momentum
(paper 0.996) to cfg.momentum_final (1.0) on a cosine over the run.

No gather across workers: the loss is a mean of per-image terms, so the mean of the workers' losses (and gradients,
which DeepSpeed averages) equals the single-process loss on the concatenated batch. BatchNorm statistics are
per worker and over both views together (the paper syncs BatchNorm across its 512 TPU cores).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale.methods.base import MomentumMethod, MomentumSection, projector


@dataclass
class BYOLSection(MomentumSection):
    """method.byol.*: projector and predictor widths and the target momentum (paper: 4096-256, 0.996 -> 1)."""


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the n images of ||p_i/|p_i| - z_i/|z_i| ||^2 = 2 - 2 cos(p_i, z_i).

    p: (n, d) online predictions of one view; z: (n, d) target projections of the other view of the same images
    (row i of both: the same image), detached here. Returns a scalar in [0, 4]."""
    p, z = F.normalize(p.float(), dim=1), F.normalize(z.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


class BYOL(MomentumMethod):
    section = BYOLSection

    def __init__(self, encoder: nn.Module, cfg, *, total_steps: int):
        head = projector(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim)
        predictor = projector(cfg.proj_dim, cfg.proj_hidden, cfg.proj_dim)
        super().__init__(encoder, cfg, head, predictor, total_steps=total_steps)

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        h0, p0, p1, t0, t1 = self.pair(batch)
        loss = byol_loss(p0, t1) + byol_loss(p1, t0)
        return {"loss": loss, "embeddings": h0.detach()}
