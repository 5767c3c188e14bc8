"""Unsupervised SimCSE (Gao et al. 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings").

Dropout is the augmentation: each passage goes through the encoder twice in training mode (the method fixes the
encoder's dropout at the paper's 0.1 through ENCODER), so its two pooled embeddings differ only by their dropout
masks. An MLP (BERT's pooler: Linear, tanh; SimCSE trains with it and transfers without) maps each to z, and each
first pass must pick its own second pass among the global batch's:

    loss = - (1 / N) sum_i log( exp(cos(z_i, z'_i) / T) / sum_j exp(cos(z_i, z'_j) / T) )

with N the global batch and T = method.simcse.temperature (0.05). The second passes of every worker are gathered
with gradients (dist.gather_with_grad), so the loss averaged over workers is the single-process loss on the
concatenated batch, gradients included. The dropout masks are drawn with the RNG seeded by (step, rank) inside
torch.random.fork_rng: a resumed run draws the masks the first would have, and the RNG outside is left as it was. Transfer reads the mean-pooled
encoder output, as for every text method. Logged: `pair_acc` (how often a passage's own second pass is the
nearest; chance 1 / N).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale import dist
from sslscale.data.modalities.text import TextLayout
from sslscale.methods.base import Method, Section


@dataclass
class SimCSESection(Section):
    """method.simcse.* (paper: BERT-base, batch 64, lr 3e-5, T 0.05, dropout 0.1, 1M Wikipedia sentences)."""

    temperature: float = 0.05  # softmax temperature over the cosine similarities

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [("temperature", self.temperature > 0, "a positive number")]


def simcse_loss(z: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy) for this worker's n passages: z, z2 (n, d) their first and second passes. Each z_i is
    scored against every second pass of the global batch; its own is the positive."""
    z, everyone = F.normalize(z.float(), dim=1), F.normalize(dist.gather_with_grad(z2.float()), dim=1)  # (N, d)
    logits = z @ everyone.T / temperature  # (n, N)
    own = torch.arange(len(z), device=z.device) + dist.rank() * len(z)
    return F.cross_entropy(logits, own), (logits.argmax(dim=1) == own).float().mean()


class SimCSE(Method):
    section = SimCSESection
    modality = "text"
    ENCODER = {"dropout": 0.1}

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        dim = encoder.feature_dim
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, TextLayout]:
        """The passage's token ids as they are: the two views are made by dropout, in forward."""
        return {"text": TextLayout()}

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]
        with torch.random.fork_rng(devices=[tokens.device] if tokens.device.type == "cuda" else []):
            torch.manual_seed(1_000_003 * step + dist.rank())  # dropout masks: a function of (step, rank)
            pooled = self.encoder(torch.cat([tokens, tokens]))  # (2n, D): both passes in one forward
        first, second = pooled.chunk(2)
        loss, acc = simcse_loss(self.head(first), self.head(second), self.cfg.temperature)
        return {"loss": loss, "pair_acc": acc, "embeddings": first.detach()}
