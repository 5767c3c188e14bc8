"""Encoders: plain PyTorch modules mapping float images (N, C, H, W) in [0, 1], or token ids (N, L) (text), to
features (N, D).

`ENCODERS` maps a name to a constructor; `build_encoder` makes one from its name, the corpus' input spec (images:
`in_channels`, `image_size`; text: `vocab_size`, `max_length`) and the constructor's own keyword arguments, which
`encoder_kwargs` picks out of the model config. Every encoder says the kind of data it takes (`modality`) and its
size (`input_size`: an image's side, a passage's most tokens), carries its input spec and `feature_dim`, and
`spec()` returns what is needed to rebuild it (`from_spec`; stored in exported safetensors metadata, see export.py).
"""
from __future__ import annotations

from torch import nn

from sslscale.encoders.resnet import ResNet, ResNet50
from sslscale.encoders.text import TextTransformer
from sslscale.encoders.vit import VIT_PRESETS, ViT
from sslscale.errors import SslscaleError

ENCODERS = {"resnet": ResNet, "resnet50": ResNet50, "vit": ViT, "text": TextTransformer}


def encoder_kwargs(model_cfg) -> dict:
    """The constructor keyword arguments of the encoder `model_cfg.encoder` names, from its model.* keys
    (model.vit_preset tiny or small, where set, in place of model.dim, vit_depth and heads; resnet50 has none)."""
    m = model_cfg
    if m.encoder == "vit":
        return {"patch_size": m.patch_size, **VIT_PRESETS.get(m.vit_preset, dict(dim=m.dim, depth=m.vit_depth,
                                                                                   heads=m.heads))}
    if m.encoder == "resnet50":
        return {}
    if m.encoder == "text":
        return {"dim": m.dim, "depth": m.vit_depth, "heads": m.heads}
    return {"widths": tuple(m.widths), "depths": tuple(m.depths)}


def build_encoder(name: str, **kwargs) -> nn.Module:
    """The encoder `name` from its input spec and its own keyword arguments."""
    if name not in ENCODERS:
        raise SslscaleError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](**kwargs)


def from_spec(spec: dict) -> nn.Module:
    """A freshly initialised encoder of the architecture an encoder's `spec()` describes."""
    inputs = {k: v for k, v in spec.items() if k not in ("name", "feature_dim", "kwargs")}
    return build_encoder(spec["name"], **inputs, **spec["kwargs"])
