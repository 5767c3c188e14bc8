"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

A random cfg.mask_ratio of each image's patches is hidden (views.patch_masks, drawn in the Ray Data stream as
`keep`, the sorted ids of the visible ones); the ViT encoder embeds and runs the visible patches only. A light
decoder embeds the encoded tokens to cfg.decoder_dim, puts a learned mask token at every hidden position, adds fixed
2D sin-cos positions, runs cfg.decoder_depth transformer blocks and predicts every patch's p*p*C pixels. With
t_i the target patch normalised by its own pixels (norm_pix_loss, the paper's better target):

    t_i = (x_i - mean(x_i)) / sqrt(var(x_i) + 1e-6)
    loss = sum_{i hidden} mean_pixels (pred_i - t_i)^2 / #hidden                 (paper sec. 3, "Reconstruction target")

var is unbiased (N - 1), as `target.var(dim=-1)` in the official code. The target is the raw [0, 1] view; the
encoder's (x - 0.5) / 0.25 input scaling is the same affine map for every channel, which the per-patch
normalisation removes (up to the eps). Paper defaults: mask 0.75, decoder 512 wide with 8 blocks (16 heads), ViT-B+
encoder. Here: the same mask ratio, a decoder cfg.decoder_dim (128) wide with cfg.decoder_depth (2) blocks and
decoder_dim // 32 heads (the paper's 32 per head; the largest divisor of decoder_dim at most that), MLP ratio 4.

No gather across workers: every image hides the same number of patches, so the loss is a mean of per-image terms
of equal weight and the mean of the workers' losses (and DeepSpeed's averaged gradients) equals the single-process
loss on the concatenated batch. The loss is computed in float32 whatever the engine's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslscale.data.modalities.image import ImageLayout
from sslscale.encoders.vit import Block, ViT, patchify, sincos_2d
from sslscale.errors import SslscaleError
from sslscale.methods.base import Method, Section


@dataclass
class MAESection(Section):
    """method.mae.* (paper: mask 0.75, decoder 512 wide with 8 blocks)."""

    mask_ratio: float = 0.75  # fraction of patches hidden from the encoder
    decoder_dim: int = 128  # decoder token width
    decoder_depth: int = 2  # decoder transformer blocks

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [("mask_ratio", 0 < self.mask_ratio < 1, "in (0, 1)"),
                ("decoder_dim", self.decoder_dim > 0 and self.decoder_dim % 4 == 0, "a positive multiple of 4"),
                ("decoder_depth", self.decoder_depth > 0, "at least 1"),
                ("model.encoder", cfg.model.encoder == "vit",
                 "vit for method.name=mae (MAE encodes the visible patches only)")]


def hidden_mask(keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """keep (N, L') long visible patch ids -> (N, L) float mask, 1 at hidden patches and 0 at visible ones."""
    mask = torch.ones(keep.shape[0], num_patches, device=keep.device)
    return mask.scatter(1, keep, 0.0)


def mae_loss(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MSE against per-patch normalised pixels, averaged over pixels and then over the hidden patches only.

    pred, target: (N, L, P) predicted and true (patchified) pixels of all L patches; keep: (N, L') long ids of the
    visible patches, which do not count. Returns a float32 scalar."""
    target = target.float()
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)  # unbiased, as the paper's code
    per_patch = (pred.float() - (target - mean) / (var + eps).sqrt()).pow(2).mean(dim=-1)  # (N, L)
    mask = hidden_mask(keep, pred.shape[1])
    return (per_patch * mask).sum() / mask.sum()


def decoder_heads(dim: int) -> int:
    """The largest divisor of `dim` that is at most max(1, dim // 32): 32-wide heads when 32 divides dim."""
    return max(h for h in range(1, max(1, dim // 32) + 1) if dim % h == 0)


class MAE(Method):
    section = MAESection

    def __init__(self, encoder: nn.Module, cfg):
        if not isinstance(encoder, ViT):
            raise SslscaleError(f"MAE needs model.encoder=vit (it encodes the visible patches only), got "
                                f"{type(encoder).__name__}: set model.encoder=vit")
        super().__init__(encoder, cfg)
        d, p = cfg.decoder_dim, encoder.patch_size
        self.embed = nn.Linear(encoder.dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos", sincos_2d(d, encoder.grid, encoder.grid), persistent=False)  # (L, d)
        self.blocks = nn.ModuleList(Block(d, decoder_heads(d), 4.0) for _ in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(d)
        self.pred = nn.Linear(d, p * p * encoder.in_channels)
        for m in [self.embed, self.pred, *self.blocks.modules()]:
            if isinstance(m, nn.Linear):  # as the ViT and the official decoder
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, ImageLayout]:
        """One view and its visible patch ids (`keep`)."""
        return {"image": ImageLayout(n_views=1, patch_mask_ratio=cfg.method.section("mae").mask_ratio,
                                     num_patches=(sizes["image"] // cfg.model.patch_size) ** 2)}

    def decode(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encoder tokens (N, 1 + L', D), CLS first, of the visible patches `keep` (N, L') -> pixels (N, L, p*p*C)."""
        x = self.embed(tokens)  # (N, 1 + L', d)
        n, d = x.shape[0], x.shape[2]
        full = self.mask_token.to(x.dtype).expand(n, self.pos.shape[0], d)  # (N, L, d)
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])  # visible tokens at their places
        x = torch.cat([x[:, :1], full + self.pos.to(x.dtype)], dim=1)  # (N, 1 + L, d)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]  # drop the CLS token

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        x, keep = batch["view_0"], batch["keep"]
        tokens = self.encoder.forward_tokens(x, keep)  # (N, 1 + L', D): visible patches only
        loss = mae_loss(self.decode(tokens, keep), patchify(x, self.encoder.patch_size), keep)
        return {"loss": loss, "embeddings": tokens[:, 0].detach()}
