"""Sentence-order prediction (Lan et al. 2020, "ALBERT: A Lite BERT for Self-supervised Learning of Language
Representations"), with BERT's masked LM beside it as ALBERT trains them.

The sentence-level task, chosen over BERT's next-sentence prediction (NSP): NSP pairs a segment with a random one
from another document half the time, which topic alone gives away, and RoBERTa (Liu et al. 2019) and ALBERT found
it did not help; SOP's negatives are the same two consecutive segments in swapped order, so only the order of the
discourse tells them apart. It also needs no second document: the [SEP] after every sentence (docs/text.md) gives
the segments inside one passage.

The stream (modalities.text.swap_segments, then mask_tokens, on the Ray Data tasks, functions of (seed, epoch, sample
id)) splits each passage after the sentence boundary nearest its middle and swaps the halves of half the passages
("order": 1), then masks tokens as BERT does. A classifier reads the pooled output, the mean of the non-padding
tokens' outputs (ALBERT's reads [CLS] through BERT's pooler; here the pooled output is the one transfer uses, so
the sentence-level objective shapes what is transferred):

    loss = CE(order_head(pool(h)), order) + [mask_ratio > 0] masked-LM loss (methods.mlm)

both means over the global batch (methods.token_loss). Without segment embeddings (the encoder has none) the
segments are told apart by the [SEP]s alone. Logged: `order_acc` (chance 0.5), and with masking `masked_acc` and
`perplexity`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslscale.data.modalities.text import TextLayout
from sslscale.methods.base import Method, Section, token_loss
from sslscale.methods.mlm import lm_head, masked_lm


@dataclass
class SOPSection(Section):
    """method.sop.* (ALBERT: SOP plus BERT's masked LM on 15% of the tokens)."""

    mask_ratio: float = 0.15  # masked-LM share of each passage's plain tokens, trained beside SOP; 0: SOP alone

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [("mask_ratio", 0 <= self.mask_ratio < 1, "in [0, 1) (0: sentence order alone)")]


class SOP(Method):
    section = SOPSection
    modality = "text"

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        dim = encoder.feature_dim
        self.order_head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 2))  # BERT's pooler + a Linear
        self.head = lm_head(dim, encoder.vocab_size) if cfg.mask_ratio > 0 else None

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, TextLayout]:
        """The passage with its segments swapped or not ("tokens", "order"), then masked ("targets")."""
        return {"text": TextLayout(sentence_order=True, token_mask_ratio=cfg.method.chosen.mask_ratio)}

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]
        h = self.encoder.forward_tokens(tokens)  # (N, L, D)
        pooled = self.encoder.pool(h, tokens)  # (N, D)
        loss, order_acc, _ = token_loss(self.order_head(pooled), batch["order"])  # (N, 2), (N,)
        out = {"order_loss": loss.detach(), "order_acc": order_acc, "embeddings": pooled.detach()}
        if self.head is not None:
            masked, out["masked_acc"], out["perplexity"] = masked_lm(self.head, h, batch["targets"])
            loss = loss + masked
        return {"loss": loss, **out}
