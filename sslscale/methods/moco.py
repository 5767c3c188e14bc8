"""MoCo v3 (Chen, Xie and He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

A query network (encoder, projector, predictor) and a momentum key network (an exponential moving average of the
query encoder and projector, MomentumMethod). Each query is contrasted with the keys of the whole global batch:
its positive is the key of the other view of its image, the other N - 1 keys are negatives (no memory queue):

    ctr(q, k) = 2T * CrossEntropy(q_i . k_j / T over the N keys j, target j = i)   (q, k l2-normalised)
    loss = ctr(q(v0), k(v1)) + ctr(q(v1), k(v0))

Keys come from every worker through a plain all-gather of detached tensors (dist.gather_no_grad): keys carry no
gradient, so each worker's loss (a mean over its own queries) averaged over workers equals the single-process loss
on the concatenated batch, and so do the gradients DeepSpeed averages.

Heads (ResNet variant of the paper's code): projector Linear-BN-ReLU-Linear-BN (last BatchNorm without affine
parameters), predictor Linear-BN-ReLU-Linear (paper: 4096 hidden, 256 out; here cfg.proj_hidden, cfg.proj_dim).
Temperature: cfg.temperature (default 0.2, as SimCLR's). The paper uses T = 0.2 for ViT and its code 1.0 for
ResNet-50 (batch 4096); the recipes keep 0.2 so the contrastive methods compare at one T (method.moco_v3.temperature=1.0
gives the paper's ResNet setting).
Key momentum: cfg.momentum to cfg.momentum_final on a cosine (paper: 0.99 to 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale import dist
from sslscale.methods.base import MomentumMethod, MomentumSection, projector


@dataclass
class MoCoV3Section(MomentumSection):
    """method.moco_v3.* (paper: heads 4096-256, T 0.2 for ViT and 1.0 in its ResNet code, momentum 0.99 -> 1)."""

    temperature: float = 0.2  # InfoNCE softmax temperature

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [*super().checks(cfg), ("temperature", self.temperature > 0, "a positive number")]


def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ctr(q, k) for this worker's queries against the keys of the global batch.

    q: (n, d) queries of one view of this worker's n images; k: (n, d) keys of the other view (row i of both: the
    same image), detached here. Returns (loss, accuracy): loss is 2T times the mean over the n queries of the
    cross-entropy of picking the own image's key among the N = n * world keys; accuracy is how often it scores highest.
    """
    n = q.shape[0]
    q = F.normalize(q.float(), dim=1)
    keys = F.normalize(dist.gather_no_grad(k).float(), dim=1)  # (N, d), no gradient
    logits = q @ keys.T / temperature  # (n, N)
    labels = torch.arange(n, device=q.device) + dist.rank() * n  # where each query's positive key sits
    loss = F.cross_entropy(logits, labels) * (2 * temperature)
    acc = (logits.argmax(dim=1) == labels).float().mean()
    return loss, acc


class MoCoV3(MomentumMethod):
    section = MoCoV3Section

    def __init__(self, encoder: nn.Module, cfg, *, total_steps: int):
        head = projector(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim, last_bn=True)
        predictor = projector(cfg.proj_dim, cfg.proj_hidden, cfg.proj_dim)
        super().__init__(encoder, cfg, head, predictor, total_steps=total_steps)

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        h0, q0, q1, k0, k1 = self.pair(batch)
        loss01, acc01 = moco_v3_loss(q0, k1, self.cfg.temperature)
        loss10, acc10 = moco_v3_loss(q1, k0, self.cfg.temperature)
        return {"loss": loss01 + loss10, "contrastive_acc": ((acc01 + acc10) / 2).detach(),
                "embeddings": h0.detach()}
