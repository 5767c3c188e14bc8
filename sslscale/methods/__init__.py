"""Pretext methods, one file each, and their registry: a config name -> the file and class that implement it.

This module imports no torch, so the config (config.MethodConfig), the CLI and `submit`'s checks read the names
without loading any method; `method_class` imports the one file a run uses. What every method builds on (the
`Method` interface, its config `Section`, the shared heads and teachers) is in base.py. Adding a method: its file,
one line in REGISTRY, a recipe (docs/adding-a-method.md).
"""
from __future__ import annotations

import importlib

# name -> "module:Class" under sslscale.methods
REGISTRY = {"simclr": "simclr:SimCLR", "barlow_twins": "barlow:BarlowTwins", "vicreg": "vicreg:VICReg",
            "byol": "byol:BYOL", "moco_v3": "moco:MoCoV3", "dino": "dino:DINO", "mae": "mae:MAE",
            "rotation": "rotation:Rotation", "denoising_ae": "denoising_ae:DenoisingAE", "mlm": "mlm:MLM",
            "gpt": "gpt:GPT", "sop": "sop:SOP", "simcse": "simcse:SimCSE",
            "wav2vec2": "wav2vec2:Wav2Vec2", "clip": "clip:CLIP"}
NAMES = tuple(REGISTRY)


def method_class(name: str) -> type:
    """The class of the method registered as `name` (a KeyError for another name: config validates names)."""
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(f"sslscale.methods.{module}"), cls)


def name_of(cls: type) -> str:
    """The registered name of a method class (the inverse of method_class)."""
    return next(name for name, where in REGISTRY.items()
                if where == f"{cls.__module__.rpartition('.')[2]}:{cls.__name__}")


def build_method(cfg, inputs: dict | None = None, start=None, **input_spec):
    """The method named by cfg.method.name, with its section of cfg.method, around the encoder cfg.model describes
    and the method's further towers (Method.towers), each for its kind's input spec in `inputs` ({kind: spec}, as
    pretraining.preflight returns it; images: in_channels and image_size, text: vocab_size and max_length), or
    for `input_spec` alone (a method of one encoder). `start({kind: module}, the encoder's kind first)` may load
    weights into the encoders before the method is made around them (model.init: an EMA teacher copies them)."""
    from sslscale.encoders import build_encoder, encoder_kwargs
    from sslscale.methods.base import MomentumMethod

    cls = method_class(cfg.method.name)
    specs = inputs or {cls.modality: input_spec}
    encoder = build_encoder(cfg.model.encoder, **specs[cls.modality], **{**encoder_kwargs(cfg.model), **cls.ENCODER})
    towers = {kind: build_encoder(family, **specs[kind], **kwargs)
              for kind, (family, kwargs) in cls.towers(cfg.method.chosen).items()}
    if start is not None:
        start({cls.modality: encoder, **towers})
    extra = {"total_steps": cfg.train.steps} if issubclass(cls, MomentumMethod) else {}
    return cls(encoder, cfg.method.chosen, **extra, **({"towers": towers} if towers else {}))


def kinds_read(cfg) -> tuple[str, ...]:
    """The kinds of data the method cfg.method.name reads: its encoder's first, then its further towers' (CLIP:
    image, text)."""
    cls = method_class(cfg.method.name)
    return cls.modality, *cls.towers(cfg.method.chosen)


def view_parts(cfg, corpus_dir: str) -> list:
    """What the run's stream makes from each record of the corpus for the method cfg.method.name: data.stream.Part
    for each field it reads, with the method's typed layout (data.stream.view_parts, given Method.views)."""
    from sslscale.data import corpus, stream  # here: the registry imports nothing (config reads it)

    return stream.view_parts(cfg, corpus.load_manifest(corpus_dir), corpus_dir, method_class(cfg.method.name).views)


def view_layouts(cfg, sizes: dict[str, int]) -> dict:
    """The typed layout of each kind of field the method cfg.method.name reads (see Method.views), for fields of
    `sizes` by kind."""
    return method_class(cfg.method.name).views(cfg, sizes)
