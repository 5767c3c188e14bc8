"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Two views of each image go through the encoder and an MLP projection head; NT-Xent pulls each view towards the
other view of its image and pushes it from the other 2N-2 views of the global batch. Negatives are gathered
from every worker with gradients (dist.gather_with_grad), so the loss averaged over workers equals the
single-process loss on the concatenated batch, gradients included.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale import dist
from sslscale.methods.base import HeadSection, Method, encode_pair, projector


@dataclass
class SimCLRSection(HeadSection):
    """method.simclr.* (paper: ResNet-50, projector 2048-128, T 0.1 at batch 4096, 0.5 in its CIFAR runs)."""

    temperature: float = 0.2  # NT-Xent softmax temperature

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [*super().checks(cfg), ("temperature", self.temperature > 0, "a positive number")]


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over the global batch, for this worker's anchors.

    z0, z1: (n, d) projections of view 0 and view 1 of this worker's n images (row i of both: the same image).
    Returns (loss, accuracy): loss is the mean over this worker's 2n anchors of the cross-entropy of picking the
    positive among the 2N-1 other views of the global batch (N = n * world size); accuracy is how often the
    positive has the highest similarity. Averaging `loss` over workers gives the single-process loss.
    """
    n, rank = z0.shape[0], dist.rank()
    z0, z1 = F.normalize(z0.float(), dim=1), F.normalize(z1.float(), dim=1)
    everyone = torch.cat([dist.gather_with_grad(z0), dist.gather_with_grad(z1)])  # (2N, d): all view 0, all view 1
    total = everyone.shape[0] // 2  # N
    anchors = torch.cat([z0, z1])  # (2n, d)
    logits = anchors @ everyone.T / temperature  # (2n, 2N)
    own = torch.arange(n, device=z0.device) + rank * n  # global index of each local image
    self_idx = torch.cat([own, own + total])  # where each anchor sits in `everyone`
    pos_idx = torch.cat([own + total, own])  # where its positive sits
    logits[torch.arange(2 * n), self_idx] = float("-inf")  # an anchor is not its own negative
    loss = F.cross_entropy(logits, pos_idx)
    acc = (logits.argmax(dim=1) == pos_idx).float().mean()
    return loss, acc


class SimCLR(Method):
    section = SimCLRSection

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        self.head = projector(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim)

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        h0, z0, z1 = encode_pair(self.encoder, self.head, batch)
        loss, acc = nt_xent(z0, z1, self.cfg.temperature)
        return {"loss": loss, "contrastive_acc": acc.detach(), "embeddings": h0.detach()}
