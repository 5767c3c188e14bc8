"""Masked language modelling (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers").

The stream corrupts each passage (modalities.text.mask_tokens, on the Ray Data tasks, a function of (seed, epoch, sample
id)): round(cfg.mask_ratio x its plain tokens) are chosen, of which 80% become [MASK], 10% a random id and 10%
stay. The text encoder reads the corrupted passage and a head predicts each chosen token's original id:

    loss = - (1 / C) sum over chosen positions (i, t) of log softmax(head(h_it))[y_it]

with C the number of chosen positions in the global batch. Head: BERT's transform (Linear, GELU, LayerNorm) and a
Linear to the vocabulary, not tied to the token embedding (tying reads the embedding outside the encoder's
forward, which ZeRO-3 partitions there).

Distributed (methods.token_loss, which the next-token method shares): workers hold different numbers of chosen
tokens, so the mean of per-worker means is not the global mean. Each worker divides its summed cross-entropy by the global C (an all-reduce of the counts, no gradient) and
multiplies by the world size: DeepSpeed's average of the workers' gradients is then the single-process gradient,
and the average of their losses the single-process loss. Logged: masked-token accuracy and perplexity (exp of
the global loss).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslscale.data.modalities.text import TextLayout
from sslscale.methods.base import Method, Section, token_loss

IGNORE = -100  # modalities.text.mask_tokens' target where a token is not predicted


@dataclass
class MLMSection(Section):
    """method.mlm.* (BERT: 15% of the tokens, 80/10/10 mask/random/keep)."""

    mask_ratio: float = 0.15  # share of each passage's plain tokens that are predicted

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [("mask_ratio", 0 < self.mask_ratio < 1, "in (0, 1)")]


def lm_head(dim: int, vocab_size: int) -> nn.Sequential:
    """BERT's masked-LM head: its transform (Linear, GELU, LayerNorm), then a Linear to the vocabulary: (M, D) ->
    (M, V)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, vocab_size))


def masked_lm(head: nn.Module, h: torch.Tensor, targets: torch.Tensor):
    """token_loss's (loss, accuracy, perplexity) of the head on the chosen positions only, as BERT's head scores
    them: h (N, L, D) the encoder's outputs, targets (N, L) the original ids there and IGNORE elsewhere."""
    chosen = targets != IGNORE  # (N, L)
    return token_loss(head(h[chosen]), targets[chosen])  # (M, V), (M,)


class MLM(Method):
    section = MLMSection
    modality = "text"

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        self.head = lm_head(encoder.feature_dim, encoder.vocab_size)

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, TextLayout]:
        """The corrupted passage ("tokens") and the ids to predict ("targets"): modalities.text.text_views with
        masking."""
        return {"text": TextLayout(token_mask_ratio=cfg.method.chosen.mask_ratio)}

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        tokens, targets = batch["tokens"], batch["targets"]
        h = self.encoder.forward_tokens(tokens)  # (N, L, D)
        loss, acc, perplexity = masked_lm(self.head, h, targets)
        return {"loss": loss, "masked_acc": acc, "perplexity": perplexity,
                "embeddings": self.encoder.pool(h, tokens).detach()}
