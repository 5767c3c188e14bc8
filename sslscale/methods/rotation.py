"""Rotation prediction (Gidaris et al. 2018, "Unsupervised Representation Learning by Predicting Image Rotations").

Every image x is rotated by k * 90 degrees for all four k in {0, 1, 2, 3} (RotNet's batch: each image with all its
rotations) and a classifier on the encoder's features predicts k:

    loss = -1/(4N) sum_i sum_k log softmax(g(f(rot90(x_i, k))))_k          (paper eq. 1-3, K = 4 rotations)

The Ray Data stream makes one augmented view per image (`views`); the rotations, the pretext labels, are made here
on the trainer with torch.rot90, so the encoder sees a batch of 4N. The paper's classifier is the upper conv
blocks of a NIN / AlexNet; here it is an MLP head on the pooled features, Linear-BN-ReLU-Linear(4) with
cfg.proj_hidden hidden units. Images must be square (rotating by 90 degrees keeps the shape).

No gather across workers: the loss is a mean of per-image terms, so with equal per-worker batches the mean of the
workers' losses (and DeepSpeed's averaged gradients) equals the single-process loss on the concatenated batch.
BatchNorm statistics are per worker, over all four rotations together.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale.data.modalities.image import ImageLayout
from sslscale.methods.base import Method, Section, projector


@dataclass
class RotationSection(Section):
    """method.rotation.*: the classifier's hidden width (the paper's is conv layers of the network itself)."""

    proj_hidden: int = 512  # hidden width of the rotation classifier

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [("proj_hidden", self.proj_hidden > 0, "a positive width")]

ROTATIONS = 4


def rotate_all(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, C, H, W) with H == W -> (x4 (4N, C, H, W), labels (4N,) long): block k (rows kN .. kN + N - 1) is x
    rotated k times by 90 degrees counter-clockwise in dims (2, 3) (torch.rot90 / np.rot90 convention), label k."""
    x4 = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(len(x))
    return x4, labels


def rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (M, 4), labels (M,) long -> (mean cross-entropy in float32, accuracy detached)."""
    loss = F.cross_entropy(logits.float(), labels)
    acc = (logits.detach().argmax(dim=1) == labels).float().mean()
    return loss, acc


class Rotation(Method):
    section = RotationSection

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        self.head = projector(encoder.feature_dim, cfg.proj_hidden, ROTATIONS)

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, ImageLayout]:
        return {"image": ImageLayout(n_views=1)}  # the rotations are made on the trainer

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        x = batch["view_0"]  # (N, C, S, S)
        x4, labels = rotate_all(x)  # (4N, C, S, S), (4N,)
        h = self.encoder(x4)  # (4N, D), one pass so BatchNorm sees every rotation
        loss, acc = rotation_loss(self.head(h), labels)
        return {"loss": loss, "rotation_acc": acc, "embeddings": h[: len(x)].detach()}  # block 0: unrotated
