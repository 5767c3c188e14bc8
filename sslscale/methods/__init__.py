"""Pretext methods: each one file with its heads, its loss and how a batch of views becomes a loss.

The interface every method follows (see `Method`): `forward(batch)` receives a dict of float view tensors
(`view_0`, `view_1`, later local crops and masks) and returns a dict with `loss` (scalar), `embeddings`
(the encoder's features of the first view, detached, for the label-free health metrics) and any scalar logs.
`after_step(step)` runs after each optimizer step (EMA teachers). `METHODS` maps a config name to a class.
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


def _registry() -> dict:
    from sslscale.methods.simclr import SimCLR

    return {"simclr": SimCLR}


METHODS = _registry()


def build_method(cfg, *, in_channels: int, image_size: int) -> Method:
    """The method named by cfg.method.name around the encoder cfg.model describes."""
    from sslscale.encoders import build_encoder

    encoder = build_encoder(cfg.model.encoder, in_channels=in_channels, image_size=image_size,
                            widths=cfg.model.widths, depths=cfg.model.depths)
    return METHODS[cfg.method.name](encoder, cfg.method)
