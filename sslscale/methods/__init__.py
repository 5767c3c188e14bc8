"""Pretext methods: each one file with its heads, its loss and how a batch of views becomes a loss.

The interface every method follows (see `Method`): `forward(batch)` receives a dict of float view tensors
(`view_0`, `view_1`, later local crops and masks) and returns a dict with `loss` (scalar), `embeddings`
(the encoder's features of the first view, detached, for the label-free health metrics) and any scalar logs.
`after_step(step)` runs after each optimizer step (EMA teachers). `METHODS` maps a config name to a class.
Shared pieces: `projector` (the Linear-BN-ReLU MLP heads) and `encode_pair` (both views in one encoder pass).
"""
from __future__ import annotations

import torch
from torch import nn


class Method(nn.Module):
    """Base class: an encoder plus whatever heads and teachers the pretext task needs."""

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after every optimizer step with the step number; teachers update here."""


def projector(dim_in: int, hidden: int, dim_out: int, hidden_layers: int = 1) -> nn.Sequential:
    """MLP head: `hidden_layers` x (Linear(no bias) - BatchNorm1d - ReLU) to width `hidden`, then Linear to dim_out.
    SimCLR uses one hidden layer; Barlow Twins and VICReg use two."""
    layers, width = [], dim_in
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, dim_out))


def encode_pair(encoder: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor]):
    """Both views through encoder and head in one pass (so BatchNorm sees one batch).
    Returns (h0, z0, z1): encoder features of view 0 (n, D) and head outputs of view 0 and view 1 (n, d) each."""
    x = torch.cat([batch["view_0"], batch["view_1"]])  # (2n, C, H, W)
    h = encoder(x)  # (2n, D)
    z0, z1 = head(h).chunk(2)  # (n, d) each
    return h[: len(z0)], z0, z1


def _registry() -> dict:
    from sslscale.methods.barlow import BarlowTwins
    from sslscale.methods.simclr import SimCLR
    from sslscale.methods.vicreg import VICReg

    return {"simclr": SimCLR, "barlow_twins": BarlowTwins, "vicreg": VICReg}


METHODS = _registry()


def build_method(cfg, *, in_channels: int, image_size: int) -> Method:
    """The method named by cfg.method.name around the encoder cfg.model describes."""
    from sslscale.encoders import build_encoder, encoder_kwargs

    encoder = build_encoder(cfg.model.encoder, in_channels=in_channels, image_size=image_size,
                            **encoder_kwargs(cfg.model))
    return METHODS[cfg.method.name](encoder, cfg.method)
