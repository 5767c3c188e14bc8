"""Encoders: plain PyTorch modules mapping float images (N, C, H, W) in [0, 1] to features (N, D).

`ENCODERS` maps a name to a constructor; `build_encoder` makes one from its name, the corpus' input spec and the
constructor's own keyword arguments, which `encoder_kwargs` picks out of the model config. Every encoder carries
`in_channels`, `image_size` and `feature_dim`, and `spec()` returns what is needed to rebuild it (stored in
exported safetensors metadata, see export.py).
"""
from __future__ import annotations

from torch import nn

from sslscale.encoders.resnet import ResNet, ResNet50
from sslscale.encoders.vit import VIT_PRESETS, ViT
from sslscale.errors import SslscaleError

ENCODERS = {"resnet": ResNet, "resnet50": ResNet50, "vit": ViT}


def encoder_kwargs(model_cfg) -> dict:
    """The constructor keyword arguments of the encoder `model_cfg.encoder` names, from its model.* keys
    (model.vit_preset tiny or small, where set, in place of model.dim, vit_depth and heads; resnet50 has none)."""
    m = model_cfg
    if m.encoder == "vit":
        return {"patch_size": m.patch_size, **VIT_PRESETS.get(m.vit_preset, dict(dim=m.dim, depth=m.vit_depth,
                                                                                   heads=m.heads))}
    if m.encoder == "resnet50":
        return {}
    return {"widths": tuple(m.widths), "depths": tuple(m.depths)}


def build_encoder(name: str, *, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    if name not in ENCODERS:
        raise SslscaleError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](in_channels=in_channels, image_size=image_size, **kwargs)
