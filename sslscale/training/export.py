"""Encoders as safetensors files: weights plus the architecture and input spec in the metadata, no pickle.

`save_encoder` writes `<name>encoder.safetensors`; `load_encoder` rebuilds the module from the metadata alone and
returns it in eval mode, mapping float images (N, C, H, W) in [0, 1] (or token ids, or waveforms) to features
(N, D). Either reads from any storage (storage.py: a run folder may be on s3://); files a user hands in are never
unpickled.

One file holds what inference needs. Besides the encoder's tensors (under their own names, as every file since
the first has them, so older files load unchanged) it may carry:
- `sslscale.tokenizer`: the corpus's tokenizer.json, for an encoder or a tower that reads text;
- for a method with towers (CLIP): `sslscale.method`, its name, config section and each tower's spec, and the rest
  of the method's tensors (the towers, the projections, the temperature) as `method.<name>`. `load_model`
  rebuilds the whole method from them (`embed_images`, `embed_texts`); `load_encoder` still reads the encoder alone.

`start_from` (model.init) starts a new run's tower of the file's kind from its encoder's weights.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from sslscale import storage
from sslscale.encoders import encoder_class, from_spec
from sslscale.errors import SslscaleError

SUFFIX = "encoder.safetensors"
META_KEY = "sslscale.encoder"
TOKENIZER_KEY, METHOD_KEY, METHOD_PREFIX = "sslscale.tokenizer", "sslscale.method", "method."


def _tensors(state: dict, prefix: str = "") -> dict:
    return {prefix + k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.contiguous().cpu()
            for k, v in state.items()}


def save_encoder(encoder: torch.nn.Module, path: str, *, method: torch.nn.Module | None = None,
                 tokenizer: bytes | None = None) -> str:
    """Write the encoder's state dict and spec atomically, with the corpus's `tokenizer` (its tokenizer.json) and,
    for a `method` with towers, the method's other tensors and how to rebuild it; returns the path."""
    if not path.endswith(SUFFIX):
        raise SslscaleError(f"export path {path!r} must end in {SUFFIX!r}, e.g. demo.{SUFFIX}")
    tensors, meta = _tensors(encoder.state_dict()), {META_KEY: json.dumps(encoder.spec())}
    if tokenizer:
        meta[TOKENIZER_KEY] = tokenizer.decode()
    if method is not None and method.tower_modules():
        from sslscale.methods import name_of

        rest = {k: v for k, v in method.state_dict().items() if not k.startswith("encoder.")}
        tensors.update(_tensors(rest, METHOD_PREFIX))
        meta[METHOD_KEY] = json.dumps({"name": name_of(type(method)), "section": dataclasses.asdict(method.cfg),
                                       "towers": {k: t.spec() for k, t in method.tower_modules().items()}})
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def copy_export(source: str, path: str) -> str:
    """An exported file (or the one in a folder, local or in storage) copied whole to `path`: its encoder, and
    whatever else it carries (towers, tokenizer); returns the path."""
    if not path.endswith(SUFFIX):
        raise SslscaleError(f"export path {path!r} must end in {SUFFIX!r}, e.g. demo.{SUFFIX}")
    with storage.local(_resolve(source)) as local:
        read_metadata(local)  # one line when it is not an exported encoder
        tmp = path + ".tmp"
        shutil.copyfile(local, tmp)
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


def read_metadata(path: str) -> dict:
    """A local exported file's metadata; one line when it is not one."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise SslscaleError(f"{path} is not a readable safetensors file ({e}); re-export it") from None
    if META_KEY not in meta:
        raise SslscaleError(f"{path} has no {META_KEY!r} metadata: it was not written by `sslscale export`")
    return meta


def read_spec(path: str) -> dict:
    return json.loads(read_metadata(_resolve(path))[META_KEY])


def load_encoder(path: str) -> torch.nn.Module:
    """An eval-mode encoder from a `*encoder.safetensors` file (or a folder holding one), local or in storage."""
    with storage.local(_resolve(path)) as local:
        encoder = from_spec(read_spec(local))
        tensors = load_file(local)
        encoder.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(METHOD_PREFIX)})
    return encoder.eval()


def load_tokenizer(path: str):
    """The tokenizer an exported file carries (a `tokenizers.Tokenizer`), or None: it reads no text, or was
    exported before files carried one."""
    from tokenizers import Tokenizer

    with storage.local(_resolve(path)) as local:
        text = read_metadata(local).get(TOKENIZER_KEY)
    try:
        return Tokenizer.from_str(text) if text else None
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception types
        raise SslscaleError(f"{path} carries a tokenizer that cannot be read ({str(e)[:80]}): re-export it") from None


def has_method(path: str) -> bool:
    """Whether an exported file holds a whole method with towers (load_model rebuilds it)."""
    with storage.local(_resolve(path)) as local:
        return METHOD_KEY in read_metadata(local)


def fresh_like(model: torch.nn.Module) -> torch.nn.Module:
    """A freshly initialised method of `model`'s architecture and config (torch's RNG as it is), in eval mode: the
    random-init baseline of a method with towers."""
    towers = {kind: from_spec(t.spec()) for kind, t in model.tower_modules().items()}
    return type(model)(from_spec(model.encoder.spec()), model.cfg, towers=towers).eval()


def load_model(path: str) -> torch.nn.Module:
    """The eval-mode method (CLIP: both towers, the projections, the temperature) an exported file holds; one line
    for a file of an encoder alone."""
    from sslscale.methods import method_class

    with storage.local(_resolve(path)) as local:
        meta = read_metadata(local)
        if METHOD_KEY not in meta:
            raise SslscaleError(f"{path} holds an encoder alone, not a method with towers: export a CLIP run's")
        info = json.loads(meta[METHOD_KEY])
        cls = method_class(info["name"])
        towers = {kind: from_spec(spec) for kind, spec in info["towers"].items()}
        model = cls(from_spec(json.loads(meta[META_KEY])), cls.section(**info["section"]), towers=towers)
        model.load_state_dict({("encoder." + k if not k.startswith(METHOD_PREFIX) else k[len(METHOD_PREFIX):]): v
                               for k, v in load_file(local).items()})
    return model.eval()


def start_from(encoders: dict, path: str, tokenizer: bytes | None = None) -> str:
    """Load the exported encoder at `path` (a file or a run folder, local or on storage every node reads, like
    train.storage) into the encoder of the same kind in `encoders` ({kind: module}, the run's encoder first, then
    a method's further towers: a text encoder starts CLIP's text tower), before the method is made around them
    (methods.build_method's `start`). `tokenizer`: the run corpus's tokenizer.json, whose vocabulary a text
    encoder's own must equal. One line when no encoder fits, the tokenizer differs or a weight's shape does;
    returns which encoder it started ("encoder", "text tower")."""
    try:
        with storage.local(_resolve(path)) as local:
            meta, tensors = read_metadata(local), load_file(local)
    except SslscaleError as e:
        raise SslscaleError(f"model.init: {e}") from None
    kind = encoder_class(json.loads(meta[META_KEY])["name"]).modality
    first = next(iter(encoders))
    if kind not in encoders:
        article = "an" if kind[0] in "aeiou" else "a"
        raise SslscaleError(f"model.init={path} is {article} {kind} encoder but the run has no {kind} encoder: "
                            f"start it from an encoder of {' or '.join(encoders)}")
    name, module = "encoder" if kind == first else f"{kind} tower", encoders[kind]
    if kind == "text":
        _same_vocabulary(path, meta.get(TOKENIZER_KEY), tokenizer)
    weights = {k: v for k, v in tensors.items() if not k.startswith(METHOD_PREFIX)}
    own = module.state_dict()
    differ = sorted(set(own) ^ set(weights)) or [k for k in own if own[k].shape != weights[k].shape]
    if differ:
        k = differ[0]
        shapes = (f"{tuple(weights[k].shape) if k in weights else 'no'} vs the run's "
                  f"{tuple(own[k].shape) if k in own else 'none'}")
        raise SslscaleError(f"model.init={path} does not fit the run's {name}: {len(differ)} weight(s) differ, e.g. "
                            f"{k} ({shapes}); give the run the file's architecture (model.* keys, a method's "
                            "tower keys) and input (the corpus's image size or tokenizer)")
    module.load_state_dict(weights)
    return name


def _same_vocabulary(path: str, carried: str | None, corpus: bytes | None) -> None:
    """One line unless the text encoder's tokenizer maps the same pieces to the same ids as the corpus's."""
    from tokenizers import Tokenizer

    if carried is None:
        raise SslscaleError(f"model.init={path} carries no tokenizer (exported before files carried one), so its "
                            "ids cannot be checked against the corpus's: re-export it from its run's checkpoint")
    if corpus is None or Tokenizer.from_str(carried).get_vocab() != Tokenizer.from_str(corpus.decode()).get_vocab():
        raise SslscaleError(f"model.init={path} was trained with another tokenizer than the corpus's: prepare the "
                            "corpus with --tokenizer <the corpus that encoder trained on>")
