"""Audio (issue 28 part 2): real spoken names prepared through corpus.prepare (soundfile, soxr, int16 shards),
the split by picture, duplicates and sound effects left out, bad files skipped or one line; the views (crops,
wav2vec 2.0's span masks and distractors) as a function of (seed, epoch, id) on a real shard; the log-mel baseline."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speech import LANGS, speech_subset
from sslscale.data import corpus, shards, stream
from sslscale.data.modalities import Audio, data_field
from sslscale.data.modalities.audio import PAD, AudioLayout, audio_views, frame_count, log_mel, span_masks
from sslscale.data.position import Position
from sslscale.data.sources import audio
from sslscale.errors import SslscaleError

LAYOUT = AudioLayout(crop=16000, mask_prob=0.065, mask_length=10, num_negatives=5)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """(the subset's folder, its prepared corpus's manifest, the corpus folder)."""
    tmp = tmp_path_factory.mktemp("speech")
    root = speech_subset(tmp / "stamps")
    out = tmp / "corpus"
    return root, corpus.prepare("tuxpaint_speech", out, path=str(root), progress=False), out


def test_spoken_names_become_int16_clips_labelled_by_language_and_split_by_picture(speech):
    root, m, out = speech
    field = data_field(m)
    assert isinstance(field, Audio) and field.member == "audio.pcm16" and field.sample_rate == 16000
    assert m["fields"]["label"]["classes"] == sorted(LANGS)  # Dutch (one clip) left out, English absent
    assert m["source"]["kind"] == "tuxpaint_speech" and m["skipped"] == []
    distinct = {audio.read_clip(p).tobytes() for p, _, lang in audio.spoken_names(root) if lang in LANGS}
    assert sum(s["samples"] for s in m["splits"].values()) == len(distinct)  # a recording once; no sound effect
    assert any(p.suffix == ".ogg" and "_desc" not in p.name for p in root.rglob("*"))  # though the folder has one
    _, clips, labels = corpus.read_split(out, "train")
    _, test_clips, test_labels = corpus.read_split(out, "test")
    assert clips.dtype == np.int16 and clips.shape[1] == 48000 and len(test_clips) == m["splits"]["test"]["samples"]
    assert (clips != PAD).sum(1).min() >= 1600 and not (clips[:, :1600] == PAD).any()  # at least 0.1 s, PAD at the end
    # a recording is on one side only (the split by picture: test_the_split_holds_whole_pictures)
    train_bytes = {c[c != PAD].tobytes() for c in clips}
    assert not any(c[c != PAD].tobytes() in train_bytes for c in test_clips)
    expect = audio.read_clip(next(p for p, *_ in audio.spoken_names(root)))
    assert any(np.array_equal(c[c != PAD], expect) for c in np.concatenate([clips, test_clips]))


def test_the_split_holds_whole_pictures(speech):
    """Every language of a picture, and its variants (the -9 copy), fall on one side of a seeded split."""
    root, _, _ = speech
    pictures: dict[bytes, set] = {}  # a clip's pictures: two names may share one recording (heron_greatblue)
    for p, stamp, lang in audio.spoken_names(root):
        if lang in LANGS:
            pictures.setdefault(audio.read_clip(p).tobytes(), set()).add(stamp)
    src = audio.open_source("tuxpaint_speech", on_error="fail", test_fraction=0.25, seed=3, path=str(root))
    sides = {split: set().union(*(pictures[values[0].tobytes()] for values, _ in samples))
             for split, (_, samples) in src.splits.items()}
    assert len(sides["test"]) == 6 and len(sides["train"]) >= 16  # 24 pictures, a quarter held out
    assert not sides["train"] & sides["test"]


def test_bad_audio_files_are_skipped_or_one_line(tmp_path):
    folder = tmp_path / "folder"
    spoken = [p for p, _, lang in audio.spoken_names(Path(audio.TUXPAINT_DIR)) if lang == "fr"][:4]
    for n, lang in enumerate(("fr", "ru")):
        (folder / lang).mkdir(parents=True)
        for i, p in enumerate(spoken[2 * n:2 * n + 2]):
            (folder / lang / f"{i}.ogg").write_bytes(p.read_bytes())
    (folder / "fr" / "bad.ogg").write_bytes(b"OggS not really")
    with pytest.raises(SslscaleError, match=r"cannot read audio file .*bad.ogg: .*; fix or remove it, or pass "
                                            r"--on-error skip"):
        corpus.prepare(str(folder), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing written
    m = corpus.prepare(str(folder), tmp_path / "out", progress=False, on_error="skip", test_fraction=0.5)
    assert m["source"]["kind"] == "audio folder" and m["fields"]["label"]["classes"] == ["fr", "ru"]
    assert [s.endswith("bad.ogg") for s in m["skipped"]] == [True]
    assert {k: v["samples"] for k, v in m["splits"].items()} == {"train": 2, "test": 2}
    with pytest.raises(SslscaleError, match="no spoken names .* under .*: install the Debian package "
                                            "tuxpaint-stamps-default"):
        corpus.prepare("tuxpaint_speech", tmp_path / "none", path=str(tmp_path / "folder"), progress=False)


def test_a_damaged_clip_is_one_line():
    field = Audio("audio", {"kind": "audio", "encoding": "pcm16", "sample_rate": 16000, "max_samples": 8})
    assert field.decode(np.arange(3, dtype="<i2").tobytes()).tolist() == [0, 1, 2] + [PAD] * 5
    for data in (b"\x01\x02\x03", b"", bytes(18)):
        with pytest.raises(SslscaleError, match="bytes are not a clip of up to 8 16-bit samples: the corpus is "
                                                "damaged"):
            field.decode(data)


def test_span_masks_follow_the_paper_and_are_a_function_of_seed_epoch_and_id():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 200, 400)
    ids = np.arange(1000, 1400)
    mask, negatives = span_masks(frames, 200, ids, seed=1, epoch=2, layout=LAYOUT)
    again = span_masks(frames[::-1], 200, ids[::-1], seed=1, epoch=2, layout=LAYOUT)
    assert np.array_equal(again[0], mask[::-1]) and np.array_equal(again[1], negatives[::-1])
    assert not np.array_equal(span_masks(frames, 200, ids, seed=1, epoch=3, layout=LAYOUT)[0], mask)
    position = np.arange(200)[None, :]
    assert not (mask & (position >= frames[:, None])).any()  # padding frames are never masked
    long = frames >= 100
    share = mask[long].sum() / frames[long].sum()
    assert abs(share - (1 - (1 - 0.065) ** 10)) < 0.05  # p = 0.065 starts, M = 10: ~49% of the frames masked
    for i in np.flatnonzero(frames > 20)[:50]:
        masked = np.flatnonzero(mask[i])
        runs = np.split(masked, np.flatnonzero(np.diff(masked) > 1) + 1)
        assert all(len(r) >= 10 or r[-1] == frames[i] - 1 for r in runs)  # spans of M, unless cut at the end
        drawn = negatives[i, masked]
        assert np.isin(drawn, masked).all() and not (drawn == masked[:, None]).any()  # other masked frames
    assert (mask.sum(1)[frames >= 11] >= 10).all()  # at least min_masks spans where there is room


def test_the_stream_makes_wav2vec2_views_from_a_real_shard(speech, tmp_path):
    """stream.make_views on a real audio shard (what each Ray Data task runs): random 1 s windows of each clip,
    span masks over the encoder's frames and distractors, as audio_views makes them from the clips."""
    _, m, out = speech
    field = data_field(m)
    shard = m["splits"]["train"]["shards"][0]
    read = dict(corpus_dir=str(out), fmt="webdataset", consumed=Position(), on_error="skip",
                skip_dir=str(tmp_path / "skips"), members=(field.member,))
    item = {"epoch": np.array([1]), "shard": np.array([shard["name"]]), "sha256": np.array([shard["sha256"]])}
    rows = stream.read_rows(item, **read)
    parts = [stream.Part(field, LAYOUT, {})]
    got = stream.make_views(rows, seed=7, on_error="fail", parts=parts)
    ids, data, _ = corpus.read_split(out, "train")
    clips = data[np.searchsorted(ids, got["id"])]
    expected = audio_views(clips, got["id"], seed=7, epoch=1, layout=LAYOUT)
    assert set(got) == {"id", "epoch", "wave", "mask", "distractors"}
    assert all(np.array_equal(got[k], v) for k, v in expected.items())
    wave, n = got["wave"], (clips != PAD).sum(1)
    assert wave.shape == (len(clips), 16000) and wave.dtype == np.int16
    assert got["mask"].shape == (len(clips), frame_count(16000, 400, 320))
    for w, c, length in zip(wave, clips, n):  # a window of the clip: where it starts, the clip's samples follow
        kept = w[w != PAD]
        start = next(s for s in range(max(length - 16000, 0) + 1) if np.array_equal(c[s:s + len(kept)], kept))
        assert len(kept) == min(length, 16000) and start <= max(length - 16000, 0)
    assert stream.row_bytes(parts) == 16000 * 2 + 49 + 49 * 5 * 8 + 16


def test_log_mel_finds_a_tone_and_ignores_padding():
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype(np.int16)
    padded = np.concatenate([tone, np.full(8000, PAD, np.int16)])
    features = log_mel(np.stack([padded, np.concatenate([tone, tone[:8000]])])).numpy()
    assert features.shape == (2, 160)
    assert np.allclose(features[0], features[1], atol=0.05)  # padding is not silence: a tone held longer is the same
    mel = 2595 * np.log10(1 + 1000 / 700)  # the bin whose centre is nearest 1 kHz holds the most energy
    centres = np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 82)[1:-1]
    assert abs(int(np.argmax(features[0, :80])) - int(np.argmin(abs(centres - mel)))) <= 1


def test_prepare_from_the_command_line_and_its_help(speech, tmp_path):
    root, _, _ = speech
    exe = [sys.executable, "-m", "sslscale.cli"]
    done = subprocess.run([*exe, "data", "prepare", "tuxpaint_speech", "--path", str(root), "--out",
                           str(tmp_path / "c"), "--format", "parquet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["format"] == "parquet" and m["fields"]["audio"]["kind"] == "audio"
    rows = list(shards.read_shard(str(tmp_path / "c" / m["splits"]["train"]["shards"][0]["name"]), "parquet",
                                  members=("audio.pcm16",)))
    assert len(rows) == m["splits"]["train"]["shards"][0]["samples"]
    bad = subprocess.run([*exe, "data", "prepare", "tuxpaint_speech", "--path", str(root), "--out",
                          str(tmp_path / "d"), "--image-size", "32"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith(
        "sslscale: error: --image-size does not apply to audio source 'tuxpaint_speech' (it takes --path)")


def test_a_run_refuses_an_audio_corpus_with_another_kinds_method_or_encoder_in_one_line(speech):
    from sslscale.config import Config
    from sslscale.pretraining import _data_fields

    _, m, out = speech
    with pytest.raises(SslscaleError, match=f"method.name=simclr trains on images but corpus {out} holds audio"):
        _data_fields(str(out), Config())
    with pytest.raises(SslscaleError, match="model.encoder=resnet takes images but corpus .* holds audio: set "
                                            "model.encoder=wav2vec"):
        _data_fields(str(out), Config().override(["method.name=wav2vec2"]))
    assert list(_data_fields(str(out), Config().override(["method.name=wav2vec2", "model.encoder=wav2vec"]))) == [
        "audio"]
    slow = Audio("audio", {**m["fields"]["audio"], "sample_rate": 8000})
    with pytest.raises(SslscaleError, match="transfer.target t is sampled at 8000 Hz but the encoder takes the "
                                            "corpus' 16000 Hz: pick a target at that rate"):
        data_field(m).check_target(slow, "t", str(out), "t")
