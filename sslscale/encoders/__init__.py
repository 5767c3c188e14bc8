"""Encoders: plain PyTorch modules mapping float images (N, C, H, W) in [0, 1], or token ids (N, L) (text), to
features (N, D), and their registry.

`REGISTRY` maps a name to the file and class that implement it and imports nothing (config.py reads its names for
model.encoder without loading torch); `encoder_class` loads one. `build_encoder` makes one from its name, the
corpus' input spec (images: `in_channels`, `image_size`; text: `vocab_size`, `max_length`) and the constructor's
own keyword arguments, which `encoder_kwargs` asks the class to pick out of the model config (`model_kwargs`).
Every encoder says the kind of data it takes (`modality`) and its size (`input_size`: an image's side, a
passage's most tokens), carries its input spec and `feature_dim`, and `spec()` returns what is needed to rebuild
it (`from_spec`; stored in exported safetensors metadata, see export.py). Adding a family: its file, one line in
REGISTRY.
"""
from __future__ import annotations

import importlib

from sslscale.errors import SslscaleError

# name -> "module:Class" under sslscale.encoders
REGISTRY = {"resnet": "resnet:ResNet", "resnet50": "resnet:ResNet50", "vit": "vit:ViT", "text": "text:TextTransformer",
            "wav2vec": "wav2vec:Wav2Vec"}
NAMES = tuple(REGISTRY)


def encoder_class(name: str) -> type:
    """The class of the encoder family `name`; one line for a name no family has."""
    if name not in REGISTRY:
        raise SslscaleError(f"unknown encoder {name!r}; known: {', '.join(sorted(REGISTRY))}")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(f"sslscale.encoders.{module}"), cls)


def encoder_kwargs(model_cfg) -> dict:
    """The constructor keyword arguments of the encoder `model_cfg.encoder` names, from its model.* keys."""
    return encoder_class(model_cfg.encoder).model_kwargs(model_cfg)


def build_encoder(name: str, **kwargs):
    """The encoder `name` from its input spec and its own keyword arguments."""
    return encoder_class(name)(**kwargs)


def from_spec(spec: dict):
    """A freshly initialised encoder of the architecture an encoder's `spec()` describes."""
    inputs = {k: v for k, v in spec.items() if k not in ("name", "feature_dim", "kwargs")}
    return build_encoder(spec["name"], **inputs, **spec["kwargs"])
