"""The kind of data is declared, not guessed (docs/design.md, modalities): the core modules hold no rank, attribute
or member-name sniffing, a manifest field of an unknown or undeclared kind is refused in one line, and a kind the
core has never seen (here a test-only waveform kind: int16 (N, T), the shape of token ids) goes through the
stream, transfer and fine-tuning's batches as that kind, never as text."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dataclasses import dataclass

from sslscale.data import modalities, stream
from sslscale.data.modalities import ImageLayout, Layout, Modality
from sslscale.errors import SslscaleError


@dataclass(frozen=True)
class WaveLayout(Layout):
    def fields(self) -> dict[str, str]:
        return {"wave": "ids"}

CORE = ["data/stream", "data/corpus", "evaluation/transfer", "evaluation/finetune", "pretraining", "training/train",
        "data/probe", "data/shards", "training/engine"]
# how the core used to tell kinds apart: by rank, by an encoder's attributes, by a field's or member's name
SNIFFING = [r"\.ndim\s*[=!]=\s*2\b", r"(hasattr|getattr)\([^)]*(vocab|image|channel|text|max_length)",
            r"[\"']text\.ids[\"']",
            r"[\"'](vocab_size|text|image|label)[\"']\s+(not\s+)?in\b", r"\[\"fields\"\]\[\"(image|text|label)\"\]",
            r"\.get\([\"']text[\"']\)"]


def test_the_core_never_sniffs_the_kind_of_data():
    root = Path(__file__).parent.parent / "sslscale"
    found = [f"{name}.py:{i}: {line.strip()}" for name in CORE
             for i, line in enumerate((root / f"{name}.py").read_text().splitlines(), 1)
             if any(re.search(p, line) for p in SNIFFING)]
    assert not found, "the core tells kinds apart by shape or name; ask the field's Modality instead:\n" + \
        "\n".join(found)


def test_a_field_of_an_unknown_or_undeclared_kind_is_one_line():
    for entry, words in (({"kind": "smell"}, "field 'x' of c has kind 'smell', which this version does not know "
                                             r"\(known: image, text, label\): re-prepare it"),
                         ({"encoding": "png"}, "field 'x' of c has kind None")):
        with pytest.raises(SslscaleError, match=words):
            modalities.data_fields({"fields": {"x": entry}}, "c")
    with pytest.raises(SslscaleError, match="c holds no data field"):
        modalities.data_field({"fields": {"label": {"kind": "label", "classes": ["a"]}}}, "c")


class Wave(Modality):
    """A test-only kind: int16 samples of a fixed length, like a waveform (an (N, T) batch, as token ids are)."""

    kind, noun, encoding, labelled_field, labelled_input = "wave", "waves", "pcm", "wave", "ids"
    layout = WaveLayout

    @property
    def size(self) -> int:
        return self.entry["length"]

    def describe(self) -> str:
        return "a waveform"

    def decode(self, data: bytes) -> np.ndarray:
        if len(data) != 2 * self.size:
            raise SslscaleError("not a waveform")
        return np.frombuffer(data, "<i2").copy()

    def blank(self) -> np.ndarray:
        return np.zeros(self.size, np.int16)

    def views(self, samples, ids, *, seed, epoch, layout) -> dict:
        return {"wave": samples.astype(np.int64) * (1 + epoch)}

    def to_encoder(self, batch):
        return torch.from_numpy(np.asarray(batch, np.float32))

    def check_fits(self, encoder, batch, where: str = "target") -> None:
        pass

    def baseline(self, train_x, test_x):
        return "raw", self.to_encoder(train_x), self.to_encoder(test_x)

    def labelled(self, samples, view_ids, *, seed: int, views: dict) -> dict:
        return {"wave": np.asarray(samples, np.int64)}


class WaveEncoder(nn.Module):
    modality = "wave"

    def forward(self, x):
        return torch.stack([x.mean(1), x.std(1)], 1)


@pytest.fixture
def waves(monkeypatch):
    monkeypatch.setitem(modalities.KINDS, "wave", Wave)
    manifest = {"fields": {"clip": {"kind": "wave", "encoding": "pcm", "length": 6},
                           "label": {"kind": "label", "classes": ["a", "b"]}}}
    return modalities.data_field(manifest, "the wave corpus")


def test_a_kind_the_core_has_never_seen_goes_through_the_stream_and_transfer_as_declared(waves, tmp_path):
    from sslscale.evaluation.finetune import VIEWS, _batches
    from sslscale.evaluation.transfer import features

    assert isinstance(waves, Wave) and waves.member == "clip.pcm"
    clips = np.arange(24, dtype=np.int16).reshape(4, 6)  # (N, T): a text corpus's shape
    raw = np.empty(5, dtype=object)
    for i, members in enumerate([(c.tobytes(),) for c in clips] + [(b"\x01",)]):  # a tuple of members per record
        raw[i] = members
    rows = {"id": np.arange(5, dtype=np.int64), "epoch": np.full(5, 2, np.int64), "raw": raw,
            "shard": np.full(5, "train-000000.tar", dtype=object)}
    parts = [stream.Part(waves, WaveLayout(), {})]
    out = stream.make_views(rows, seed=0, on_error="skip", parts=parts, skip_dir=str(tmp_path))
    assert out["id"].tolist() == [0, 1, 2, 3] and np.array_equal(out["wave"], clips.astype(np.int64) * 3)
    assert stream.skipped(str(tmp_path))["sample"] == {"4": "sample 4 in shard train-000000.tar cannot be decoded "
                                                            "as a waveform (clip)"}
    assert stream.row_bytes(parts) == 6 * 8 + 16
    with pytest.raises(SslscaleError, match="method.name=simclr asks the wave field 'clip' for ImageLayout views; "
                                            "a wave field makes WaveLayout"):
        waves.check_layout(ImageLayout(), "simclr")
    got = features(WaveEncoder(), waves, clips)
    assert torch.allclose(got[:, 0], torch.from_numpy(clips.astype(np.float32)).mean(1))
    batch = next(_batches(waves, clips, np.arange(4) % 2, np.arange(4), 2, 1, seed=0))
    assert set(batch) == {"wave", "label"} and batch["wave"].dtype == np.int64
    assert VIEWS  # image strengths, which a kind without augmentations ignores


def test_a_layout_option_its_kind_does_not_have_is_an_error_naming_it():
    """Layouts are typed (issue 28 item 3): MAE's patch ratio and BERT's token ratio are options of two kinds, and a
    key one kind does not have no longer vanishes into `**_`."""
    from sslscale.data.modalities import TextLayout

    with pytest.raises(TypeError, match="unexpected keyword argument 'mask_ratio'"):
        ImageLayout(mask_ratio=0.75)
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_views'"):
        TextLayout(n_views=2)
    assert ImageLayout(n_views=1, patch_mask_ratio=0.75, num_patches=16).fields() == {"view_0": "pixels",
                                                                                     "keep": "ids"}
    assert TextLayout(token_mask_ratio=0.15, sentence_order=True).fields() == {"tokens": "ids", "order": "ids",
                                                                               "targets": "ids"}
