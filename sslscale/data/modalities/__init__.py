"""The kinds of data a record's field holds, each declared in manifest.json and owned by one file here.

A prepared corpus's manifest names every field of its records with its kind: `{"image": {"kind": "image",
"encoding": "png", "shape": [28, 28, 1], ...}, "label": {"kind": "label", "classes": [...]}}`. `data_fields`
turns the data fields (every field but the label) into `Modality` objects, and the core (corpus, stream,
transfer, finetune, pretraining, train) asks them whatever differs by kind: how a sample is decoded from its shard
member and stacked, its default views, what an encoder takes, the no-learning baseline, the labelled batch of the
probes and fine-tuning. The core never tells kinds apart by array rank, dtype, attribute or member name
(tests/test_modalities.py greps it).

A record may hold several data fields (a picture and its caption): a pretext method names a typed Layout for each
kind it reads (methods.base.Method.views), and the stream reads a member per field from one record.

Adding a kind: one file here with a `Modality` subclass and its `Layout`, one line in `KINDS`, an encoder family
whose class says `modality = "<kind>"` (encoders/), and a source (sources/) that writes the field with its kind.
"""
from __future__ import annotations

from sslscale.data.modalities.audio import Audio, AudioLayout
from sslscale.data.modalities.base import Layout, Modality
from sslscale.data.modalities.image import Image, ImageLayout
from sslscale.data.modalities.text import Text, TextLayout
from sslscale.errors import SslscaleError

KINDS: dict[str, type[Modality]] = {"image": Image, "text": Text, "audio": Audio}
LABEL = "label"  # the kind of a field pretraining never reads: a class index, for transfer targets


def data_fields(manifest: dict, where="the corpus") -> dict[str, Modality]:
    """The data fields of a corpus's records, by field name, each as its declared kind's Modality; one line for a
    field of an unknown or undeclared kind."""
    out = {}
    for name, entry in manifest["fields"].items():
        kind = entry.get("kind")
        if kind == LABEL:
            continue
        if kind not in KINDS:
            raise SslscaleError(f"field {name!r} of {where} has kind {kind!r}, which this version does not know "
                                f"(known: {', '.join([*KINDS, LABEL])}): re-prepare it with `sslscale data prepare`")
        out[name] = KINDS[kind](name, entry)
    return out


def data_field(manifest: dict, where="the corpus", kind: str | None = None) -> Modality:
    """The corpus's data field of `kind` (None: its one data field, as an encoder of one kind reads); one line when
    it has none, or several that `kind` does not tell apart."""
    fields = [f for f in data_fields(manifest, where).values() if kind in (None, f.kind)]
    if len(fields) != 1:
        has = ", ".join(f"{name} ({entry.get('kind')})" for name, entry in manifest["fields"].items())
        wanted = f"one {KINDS[kind].noun} field" if kind in KINDS else "one data field"
        raise SslscaleError(f"{where} holds {len(fields) or 'no'} data fields where {wanted} is read (it has "
                            f"{has}): prepare a corpus of that kind")
    return fields[0]


def labelled(manifest: dict) -> bool:
    """Whether the corpus's records carry a label field."""
    return any(entry.get("kind") == LABEL for entry in manifest["fields"].values())


def label_names(manifest: dict) -> list[str]:
    """The class names of the corpus's label field."""
    return next(entry["classes"] for entry in manifest["fields"].values() if entry.get("kind") == LABEL)


__all__ = ["KINDS", "LABEL", "Audio", "AudioLayout", "Image", "ImageLayout", "Layout", "Modality", "Text", "TextLayout", "data_field",
           "data_fields", "label_names", "labelled"]
