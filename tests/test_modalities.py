"""The kind of data is declared, not guessed (docs/design.md, modalities): the core modules hold no rank, attribute
or member-name sniffing, a manifest field of an unknown or undeclared kind is refused in one line, and a kind the
core did not know before (audio: int16 (N, T), the shape of token ids) goes through the stream, transfer and
fine-tuning's batches as that kind, never as text."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sslscale.data import modalities, stream
from sslscale.data.modalities import AudioLayout, ImageLayout
from sslscale.errors import SslscaleError

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
                                             r"\(known: image, text, audio, label\): re-prepare it"),
                         ({"encoding": "png"}, "field 'x' of c has kind None")):
        with pytest.raises(SslscaleError, match=words):
            modalities.data_fields({"fields": {"x": entry}}, "c")
    with pytest.raises(SslscaleError, match="c holds no data field"):
        modalities.data_field({"fields": {"label": {"kind": "label", "classes": ["a"]}}}, "c")


class AudioEncoder(nn.Module):
    """Takes what the audio modality hands an encoder (int16 PCM) and says so: the mean and spread of each clip."""

    modality, sample_rate, feature_dim = "audio", 16000, 2

    def forward(self, x):
        assert x.dtype == torch.int16  # audio, never token ids (int64) or pixels (float)
        x = x.float()
        return torch.stack([x.mean(1), x.std(1)], 1)


@pytest.fixture
def clips_field():
    manifest = {"fields": {"clip": {"kind": "audio", "encoding": "pcm16", "sample_rate": 16000, "max_samples": 6},
                           "label": {"kind": "label", "classes": ["a", "b"]}}}
    return modalities.data_field(manifest, "the audio corpus")


def test_an_int16_audio_batch_goes_through_the_stream_transfer_and_fine_tuning_as_audio(clips_field, tmp_path):
    """An int16 (N, T) batch, the shape of token ids, is made, scored and fine-tuned on as the audio it is declared."""
    from sslscale.evaluation.finetune import Classifier, VIEWS, _batches
    from sslscale.evaluation.transfer import features

    assert isinstance(clips_field, modalities.Audio) and clips_field.member == "clip.pcm16"
    clips = np.arange(1, 25, dtype=np.int16).reshape(4, 6)  # (N, T): a text corpus's shape
    raw = np.empty(5, dtype=object)
    for i, members in enumerate([(c.tobytes(),) for c in clips] + [(b"\x01",)]):  # a tuple of members per record
        raw[i] = members
    rows = {"id": np.arange(5, dtype=np.int64), "epoch": np.full(5, 2, np.int64), "raw": raw,
            "shard": np.full(5, "train-000000.tar", dtype=object)}
    parts = [stream.Part(clips_field, AudioLayout(), {})]
    out = stream.make_views(rows, seed=0, on_error="skip", parts=parts, skip_dir=str(tmp_path))
    assert out["id"].tolist() == [0, 1, 2, 3] and out["wave"].dtype == np.int16 and np.array_equal(out["wave"], clips)
    assert stream.skipped(str(tmp_path))["sample"] == {"4": "sample 4 in shard train-000000.tar cannot be decoded "
                                                            "as a mono clip of 16-bit samples at 16000 Hz (clip)"}
    assert stream.row_bytes(parts) == 6 * 2 + 16
    with pytest.raises(SslscaleError, match="method.name=simclr asks the audio field 'clip' for ImageLayout views; "
                                            "audio fields make AudioLayout"):
        clips_field.check_layout(ImageLayout(), "simclr")
    got = features(AudioEncoder(), clips_field, clips)
    assert torch.allclose(got[:, 0], torch.from_numpy(clips.astype(np.float32)).mean(1))
    batch = next(_batches(clips_field, clips, np.arange(4) % 2, np.arange(4), 2, 1, seed=0))
    assert set(batch) == {"wave", "label"} and batch["wave"].dtype == np.int16
    classifier = Classifier(AudioEncoder(), 2, None, clips_field)
    assert classifier.inputs(None, {}) == {"wave": "ids", "label": "ids"}  # moved as they are, not as pixels
    assert classifier({"wave": torch.as_tensor(batch["wave"]), "label": batch["label"]})["loss"].isfinite()
    assert clips_field.baseline(clips, clips)[0] == "logmel"
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
