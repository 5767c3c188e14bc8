"""A transformer text encoder (BERT / GPT-2 style, small): token ids (N, L) -> features (N, dim).

Token embeddings plus learned positions, the ViT's pre-norm blocks (vit.Block), a final LayerNorm. [PAD] (id 0)
keys are never attended to; with `causal` each token attends to itself and the tokens before it only (GPT);
`dropout` (SimCSE's augmentation) acts in the blocks in training mode. The
pooled output for transfer and health is the mean of the non-padding tokens' outputs (Reimers and Gurevych 2019
found mean pooling the better sentence embedding); `forward_tokens` gives every token's output, which the
token-level heads (masked-LM, next-token) read.

    >>> enc = TextTransformer(vocab_size=100, max_length=16, dim=32, depth=2, heads=2)
    >>> enc(torch.randint(5, 100, (4, 16))).shape  # (N, dim)
    torch.Size([4, 32])
"""
from __future__ import annotations

import torch
from torch import nn

from sslscale.encoders.vit import Block
from sslscale.errors import SslscaleError

PAD, MASK = 0, 4  # modalities.text.PAD and MASK: the tokenizer's padding and mask ids


class TextTransformer(nn.Module):
    modality = "text"  # the kind of data it takes (modalities.KINDS)

    @staticmethod
    def model_kwargs(model_cfg) -> dict:
        """Its constructor's own keyword arguments from the model.* keys it shares with the ViT."""
        return {"dim": model_cfg.dim, "depth": model_cfg.vit_depth, "heads": model_cfg.heads}

    def __init__(self, *, vocab_size: int, max_length: int, dim: int = 256, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, causal: bool = False, dropout: float = 0.0):
        super().__init__()
        if heads <= 0 or dim % heads or vocab_size <= MASK or max_length <= 0:
            raise SslscaleError(f"text encoder: model.dim={dim} must be a multiple of model.heads={heads}, and the "
                                f"corpus's vocabulary ({vocab_size}) and length ({max_length}) positive")
        self.vocab_size, self.max_length, self.causal, self.dropout = vocab_size, max_length, causal, dropout
        self.dim, self.depth, self.heads, self.mlp_ratio = dim, depth, heads, mlp_ratio
        self.feature_dim = dim
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_length, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def input_size(self) -> int:
        """The most tokens of a passage it takes."""
        return self.max_length

    def spec(self) -> dict:
        kwargs = {"dim": self.dim, "depth": self.depth, "heads": self.heads, "mlp_ratio": self.mlp_ratio,
                  "causal": self.causal, "dropout": self.dropout}
        return {"name": "text", "vocab_size": self.vocab_size, "max_length": self.max_length,
                "feature_dim": self.feature_dim, "kwargs": kwargs}

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, 1, L, L) bool: query i may attend to key j when j is not padding (and j <= i when causal). A query
        always may attend to itself, so a padding position's output stays finite (it is never pooled or scored)."""
        length = ids.shape[1]
        mask = (ids != PAD)[:, None, None, :].expand(-1, 1, length, -1)  # (N, 1, L, L) keys that are words
        if self.causal:
            mask = mask & torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        return mask | torch.eye(length, dtype=torch.bool, device=ids.device)

    def forward_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Every token's output (N, L, dim) for ids (N, L) int64, L at most max_length."""
        if ids.shape[1] > self.max_length:
            raise SslscaleError(f"text encoder: a sample of {ids.shape[1]} tokens is longer than its "
                                f"{self.max_length} positions: prepare the corpus with that --seq-len")
        mask = self.attention_mask(ids)
        x = self.embed(ids) + self.pos[:, : ids.shape[1]].to(self.embed.weight.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def pool(self, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The mean of the non-padding tokens' outputs: (N, L, dim), (N, L) -> (N, dim)."""
        words = (ids != PAD).unsqueeze(-1).float()  # (N, L, 1); summed in fp32, where bf16 would round counts
        return ((tokens.float() * words).sum(dim=1) / words.sum(dim=1).clamp(min=1)).to(tokens.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_tokens(ids), ids)  # (N, dim)
