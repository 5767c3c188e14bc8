"""Masked language modelling (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers").

The stream corrupts each passage (views.mask_tokens, on the Ray Data tasks, a function of (seed, epoch, sample
id)): round(cfg.mask_ratio x its plain tokens) are chosen, of which 80% become [MASK], 10% a random id and 10%
stay. The text encoder reads the corrupted passage and a head predicts each chosen token's original id:

    loss = - (1 / C) sum over chosen positions (i, t) of log softmax(head(h_it))[y_it]

with C the number of chosen positions in the global batch. Head: BERT's transform (Linear, GELU, LayerNorm) and a
Linear to the vocabulary, not tied to the token embedding (tying reads the embedding outside the encoder's
forward, which ZeRO-3 partitions there).

Distributed: workers hold different numbers of chosen tokens, so the mean of per-worker means is not the global
mean. Each worker divides its summed cross-entropy by the global C (an all-reduce of the counts, no gradient) and
multiplies by the world size: DeepSpeed's average of the workers' gradients is then the single-process gradient,
and the average of their losses the single-process loss. Logged: masked-token accuracy and perplexity (exp of
the global loss).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale import dist
from sslscale.methods import Method, Section

IGNORE = -100  # views.mask_tokens' target where a token is not predicted


@dataclass
class MLMSection(Section):
    """method.mlm.* (BERT: 15% of the tokens, 80/10/10 mask/random/keep)."""

    mask_ratio: float = 0.15  # share of each passage's plain tokens that are predicted

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [("mask_ratio", 0 < self.mask_ratio < 1, "in (0, 1)")]


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy) over the global batch, for this worker's share.

    logits: (M, V) the head's scores at this worker's M chosen positions; targets: (M,) their original ids.
    loss = world x (this worker's summed cross-entropy) / (chosen positions in the global batch), so its average over
    workers is the single-process loss on the concatenated batch; accuracy: the global batch's share of chosen
    positions whose top score is the original id, the same on every worker."""
    ce = F.cross_entropy(logits.float(), targets, reduction="sum")
    correct = (logits.argmax(dim=-1) == targets).sum()
    total = dist.all_reduce_sum(torch.stack([torch.tensor(len(targets)), correct.cpu()]).float().to(logits.device))
    scale = dist.world_size() / total[0].clamp(min=1)
    return ce * scale, total[1] / total[0].clamp(min=1)


class MLM(Method):
    section = MLMSection

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        dim = encoder.feature_dim
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim),
                                  nn.Linear(dim, encoder.vocab_size))  # (M, D) -> (M, V)

    @staticmethod
    def views(cfg, size: int) -> dict:
        """The corrupted passage ("tokens") and the ids to predict ("targets"): views.text_views with masking."""
        return {"text": True, "mask_ratio": cfg.method.chosen.mask_ratio}

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        tokens, targets = batch["tokens"], batch["targets"]
        h = self.encoder.forward_tokens(tokens)  # (N, L, D)
        chosen = targets != IGNORE  # (N, L): the head scores these M positions only, as BERT's does
        loss, acc = mlm_loss(self.head(h[chosen]), targets[chosen])  # (M, V), (M,)
        global_loss = dist.all_reduce_sum(loss.detach().float()) / dist.world_size()
        return {"loss": loss, "masked_acc": acc, "perplexity": global_loss.exp(),
                "embeddings": self.encoder.pool(h, tokens).detach()}
