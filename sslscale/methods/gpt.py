"""Next-token prediction (Radford et al. 2018 and 2019, GPT and GPT-2: "Language Models are Unsupervised Multitask
Learners").

A causal language model: the text encoder runs with its causal mask (each token attends to itself and the tokens
before it; the method fixes model's `causal` through ENCODER, so every encoder a GPT run builds, exports or
re-initialises is causal), and a head predicts token t+1 from the output at t:

    loss = - (1 / C) sum over (i, t) with x_i,t+1 not [PAD] of log softmax(head(h_it))[x_i,t+1]

with C the number of such positions in the global batch (methods.token_loss: each worker's summed cross-entropy
over the global count, so unequal padding across workers still gives the single-process loss and gradient). The
passage is its own target: the stream sends the plain token ids, nothing is drawn. Head: a Linear from the
encoder's final LayerNorm to the vocabulary, as GPT-2's, but not tied to the token embedding (tying reads the
embedding outside the encoder's forward, which ZeRO-3 partitions there).

Transfer reads the mean of the non-padding tokens' outputs, as for every text method; under the causal mask an
early token sees little of the passage, so the mean weighs the later, better-informed tokens no more than the
first (GPT-1 fine-tuned on the last token instead). Logged: next-token accuracy (`token_acc`) and perplexity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslscale.data.modalities.text import TextLayout
from sslscale.encoders.text import PAD
from sslscale.errors import SslscaleError
from sslscale.methods.base import Method, Section, token_loss


@dataclass
class GPTSection(Section):
    """method.gpt.*: none of its own; the model (model.*, made causal) and the optimizer say everything."""


class GPT(Method):
    section = GPTSection
    modality = "text"
    ENCODER = {"causal": True}

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        if not getattr(encoder, "causal", False):
            raise SslscaleError("GPT needs a causal text encoder: build it with causal=True (build_method does)")
        self.head = nn.Linear(encoder.feature_dim, encoder.vocab_size)  # (M, D) -> (M, V)

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, TextLayout]:
        """The passage's token ids as they are ("tokens"): modalities.text.text_views without masking."""
        return {"text": TextLayout()}

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]  # (N, L)
        h = self.encoder.forward_tokens(tokens)  # (N, L, D), position t has seen tokens 0..t
        following = tokens[:, 1:]  # (N, L - 1): what each position 0..L-2 predicts
        scored = following != PAD
        loss, acc, perplexity = token_loss(self.head(h[:, :-1][scored]), following[scored])  # (M, V), (M,)
        return {"loss": loss, "token_acc": acc, "perplexity": perplexity,
                "embeddings": self.encoder.pool(h, tokens).detach()}
