"""A Vision Transformer for small images (Dosovitskiy et al. 2021), pre-norm blocks, fixed 2D sin-cos positions (MAE).

Input: float (N, C, H, W) in [0, 1], normalised inside the module like ResNet; H and W must be multiples of
`patch_size`. `forward` returns the CLS token after the final LayerNorm, (N, dim). `forward_tokens(x, keep_idx)`
returns every token, (N, 1 + L', dim), and with `keep_idx` (N, L') embeds and runs only those patches (MAE's
encoder sees the visible patches only). Positions are computed, not learned, so inputs smaller than `image_size`
(DINO's local crops) get positions spread over the same range as the full grid, as DINO's interpolation does.

    >>> enc = ViT(in_channels=1, image_size=28, patch_size=4, dim=32, depth=2, heads=2)
    >>> enc(torch.rand(8, 1, 28, 28)).shape  # (N, dim)
    torch.Size([8, 32])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslscale.errors import SslscaleError

VIT_PRESETS = {"tiny": dict(dim=192, depth=12, heads=3), "small": dict(dim=384, depth=12, heads=6)}


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), patches in row-major order, each flattened as (p, p, C) like MAE."""
    n, c, h, w = x.shape
    p = patch_size
    x = x.reshape(n, c, h // p, p, w // p, p)  # (N, C, gh, p, gw, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(N, L, p*p*C) -> (N, C, H, W) for a square grid of L patches: the inverse of `patchify`."""
    n, length, _ = patches.shape
    p, g = patch_size, int(round(length**0.5))
    x = patches.reshape(n, g, g, p, p, channels)  # (N, gh, gw, p, p, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, g * p, g * p)


def sincos_2d(dim: int, grid: int, full_grid: int) -> torch.Tensor:
    """(grid*grid, dim) fixed positions; a grid smaller than `full_grid` is spread over the same coordinate range."""
    coords = (torch.arange(grid, dtype=torch.float64) + 0.5) * full_grid / grid - 0.5  # = arange when grid == full
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")

    def embed(pos: torch.Tensor) -> torch.Tensor:  # (L,) -> (L, dim/2)
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed(ys), embed(xs)], dim=1).float()  # (L, dim): first half rows, second half columns


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)). `mask` (N, 1, T, T) or (T, T) bool,
    True where a query may attend to a key (text: padding and the causal mask); None: everything attends.
    `dropout` (BERT's 0.1; default 0, as the ViTs train) drops attention weights and each branch's output in
    training mode."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, N, h, T, d/h)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)  # (N, h, T, d/h)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x), mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    modality = "image"  # the kind of data it takes (modalities.KINDS)

    @staticmethod
    def model_kwargs(model_cfg) -> dict:
        """Its constructor's own keyword arguments from the model.* keys: patch_size, and dim, vit_depth and heads
        (or the model.vit_preset tiny or small in their place)."""
        m = model_cfg
        return {"patch_size": m.patch_size,
                **VIT_PRESETS.get(m.vit_preset, dict(dim=m.dim, depth=m.vit_depth, heads=m.heads))}

    def __init__(self, *, in_channels: int, image_size: int, patch_size: int = 4, dim: int = 192, depth: int = 12,
                 heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        _check(image_size, patch_size, dim, heads)
        self.in_channels, self.image_size, self.patch_size = in_channels, image_size, patch_size
        self.dim, self.depth, self.heads, self.mlp_ratio = dim, depth, heads, mlp_ratio
        self.feature_dim = dim
        self.grid = image_size // patch_size
        self.num_patches = self.grid**2
        self.patch_embed = nn.Linear(patch_size * patch_size * in_channels, dim)  # = a stride-p conv, on patchify
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_2d(dim, self.grid, self.grid), persistent=False)  # (L, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def input_size(self) -> int:
        """The side of the images it takes (the size its methods' views are made at)."""
        return self.image_size

    def spec(self) -> dict:
        kwargs = {"patch_size": self.patch_size, "dim": self.dim, "depth": self.depth, "heads": self.heads,
                  "mlp_ratio": self.mlp_ratio}
        return {"name": "vit", "in_channels": self.in_channels, "image_size": self.image_size,
                "feature_dim": self.feature_dim, "kwargs": kwargs}

    def positions(self, height: int, width: int) -> torch.Tensor:
        """(L, dim) positions for an input of this size (the cached buffer at image_size)."""
        if height != width or height % self.patch_size:
            raise SslscaleError(f"ViT input must be square with a side divisible by {self.patch_size}, got "
                                f"{height}x{width}: make the view sizes (e.g. data.local_size) multiples of it")
        grid = height // self.patch_size
        return self.pos if grid == self.grid else sincos_2d(self.dim, grid, self.grid).to(self.pos.device)

    def forward_tokens(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """All token outputs (N, 1 + L', dim), CLS first; `keep_idx` (N, L') long keeps only those patches."""
        n = x.shape[0]
        pos = self.positions(x.shape[2], x.shape[3]).to(x.dtype).expand(n, -1, -1)  # (N, L, dim)
        patches = patchify((x - 0.5) / 0.25, self.patch_size)  # (N, L, p*p*C)
        if keep_idx is not None:
            patches, pos = _gather(patches, keep_idx), _gather(pos, keep_idx)  # (N, L', p*p*C), (N, L', dim)
        tokens = self.patch_embed(patches) + pos  # (N, L', dim)
        x = torch.cat([self.cls_token.to(x.dtype).expand(n, -1, -1), tokens], dim=1)  # (N, 1 + L', dim)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]  # (N, dim)


def _gather(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens (N, L, D), idx (N, L') -> (N, L', D)."""
    return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[2]))


def _check(image_size: int, patch_size: int, dim: int, heads: int) -> None:
    if patch_size <= 0 or image_size % patch_size:
        raise SslscaleError(f"model.patch_size={patch_size} does not divide the image size {image_size}: "
                            f"set model.patch_size to a divisor of {image_size}")
    if heads <= 0 or dim % heads or dim % 4:
        raise SslscaleError(f"model.dim={dim} must be a multiple of 4 and of model.heads={heads}: "
                            f"e.g. model.dim=192 model.heads=3")
