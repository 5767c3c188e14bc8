"""Encoders: plain PyTorch modules mapping float images (N, C, H, W) in [0, 1] to features (N, D).

`ENCODERS` maps a name to a constructor; `build_encoder` makes one from the model config and the corpus' input
spec. Every encoder carries `in_channels`, `image_size` and `feature_dim`, and `spec()` returns what is needed to
rebuild it (stored in exported safetensors metadata, see export.py).
"""
from __future__ import annotations

from sslscale.encoders.resnet import ResNet

ENCODERS = {"resnet": ResNet}


def build_encoder(name: str, *, in_channels: int, image_size: int, **kwargs):
    if name not in ENCODERS:
        from sslscale.errors import SslscaleError

        raise SslscaleError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](in_channels=in_channels, image_size=image_size, **kwargs)
