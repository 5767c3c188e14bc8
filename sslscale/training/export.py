"""Encoders as safetensors files: weights plus the architecture and input spec in the metadata, no pickle.

`save_encoder` writes `<name>encoder.safetensors`; `load_encoder` rebuilds the module from the metadata alone and
returns it in eval mode, mapping float images (N, C, H, W) in [0, 1] to features (N, D). Either reads from any
storage (storage.py: a run folder may be on s3://); files a user hands in are never unpickled.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from sslscale import storage
from sslscale.encoders import from_spec
from sslscale.errors import SslscaleError

SUFFIX = "encoder.safetensors"
META_KEY = "sslscale.encoder"


def save_encoder(encoder: torch.nn.Module, path: str) -> str:
    """Write the encoder's state dict and spec atomically; returns the path."""
    if not path.endswith(SUFFIX):
        raise SslscaleError(f"export path {path!r} must end in {SUFFIX!r}, e.g. demo.{SUFFIX}")
    tensors = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.contiguous().cpu()
               for k, v in encoder.state_dict().items()}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={META_KEY: json.dumps(encoder.spec())})
    os.replace(tmp, path)
    return path


def _resolve(path: str) -> str:
    if storage.isdir(path):
        candidates = [f for f in storage.listdir(path) if f.endswith(SUFFIX)]
        if not candidates:
            raise SslscaleError(f"no *{SUFFIX} in {path}: export one with `sslscale export`")
        path = storage.join(path, candidates[0])
    if not storage.isfile(path):
        raise SslscaleError(f"encoder file {path} does not exist: export one with `sslscale export`")
    return path


def read_spec(path: str) -> dict:
    path = _resolve(path)
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise SslscaleError(f"{path} is not a readable safetensors file ({e}); re-export it") from None
    if META_KEY not in meta:
        raise SslscaleError(f"{path} has no {META_KEY!r} metadata: it was not written by `sslscale export`")
    return json.loads(meta[META_KEY])


def load_encoder(path: str) -> torch.nn.Module:
    """An eval-mode encoder from a `*encoder.safetensors` file (or a folder holding one), local or in storage."""
    with storage.local(_resolve(path)) as local:
        spec = read_spec(local)
        encoder = from_spec(spec)
        encoder.load_state_dict(load_file(local))
    return encoder.eval()
