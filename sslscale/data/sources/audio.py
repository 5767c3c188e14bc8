"""Audio sources for corpus.prepare: a folder of .ogg, .wav and .flac files (read recursively in path order; class
subfolders give labels and a seeded, stratified test split, as image folders do), and the built-in
`tuxpaint_speech`.

`tuxpaint_speech` is the spoken names of Tux Paint's pictures (Debian tuxpaint-stamps-default, under
/usr/share/tuxpaint/stamps/): `<stamp>_desc.ogg` is English and `<stamp>_desc_<lang>.ogg` another language, which
is the label; `<stamp>.ogg` is a sound effect, not speech, and is left out, as are languages with fewer than
MIN_CLIPS clips. The test split holds whole pictures: the variants of one picture (`cep-1`, `cep-2`) and all their
languages share its base name, and a seeded test_fraction of the base names goes to test.

Every file is read with soundfile (libsndfile, in its wheels), mixed to mono, resampled to 16 kHz with soxr, cut
to its first MAX_SECONDS and stored as int16 (modalities/audio.py). A file whose bytes equal an earlier file's is
dropped, and so is a clip whose samples equal an earlier clip's (the same recording tagged anew); a file that
cannot be read, or is shorter than MIN_SECONDS, is skipped or stops the prepare (--on-error). Variants named
`<stamp>-<n>` count as one picture; other numbered names (`sunglasses_01`, `yen001`) stay apart, as some are
different pictures.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from sslscale.data.modalities.audio import SAMPLE_RATE, to_pcm16
from sslscale.data.sources.base import Provider, Sample, Source, path_not_taken
from sslscale.data.splits import folder_files, folder_labels, folder_splits, shuffled
from sslscale.errors import SslscaleError, reason

AUDIO_EXTENSIONS = (".ogg", ".wav", ".flac")
TUXPAINT_DIR = "/usr/share/tuxpaint/stamps"
SPOKEN = re.compile(r"^(?P<stamp>.+)_desc(?:_(?P<lang>[a-z]{2,3}))?\.ogg$")  # <stamp>_desc[_<lang>].ogg
MAX_SECONDS, MIN_SECONDS = 3.0, 0.1
MIN_CLIPS = 20  # tuxpaint_speech: languages with fewer clips are left out (Malayalam has 6)


def read_clip(path: Path, max_samples: int = int(MAX_SECONDS * SAMPLE_RATE)) -> np.ndarray:
    """An audio file -> int16 mono samples at 16 kHz, at most max_samples (its start); SslscaleError (one line)
    when it cannot be read or is shorter than MIN_SECONDS."""
    import soundfile
    import soxr

    try:
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises LibsndfileError, RuntimeError, TypeError for bad files
        raise SslscaleError(f"cannot read audio file {path}: {reason(e)}") from None
    mono = wave.mean(axis=1)
    if rate != SAMPLE_RATE and len(mono):
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    if len(mono) < MIN_SECONDS * SAMPLE_RATE:
        raise SslscaleError(f"audio file {path} holds {len(mono) / SAMPLE_RATE:.3f} s, less than {MIN_SECONDS} s")
    return to_pcm16(mono[:max_samples])


def _field() -> dict[str, dict]:
    """The manifest's audio field."""
    return {"audio": {"kind": "audio", "encoding": "pcm16", "dtype": "int16", "sample_rate": SAMPLE_RATE,
                      "max_samples": int(MAX_SECONDS * SAMPLE_RATE)}}


def _digests(files: list[Path], on_error: str, skipped: list[str]) -> dict[Path, bytes]:
    """Each readable file's sha256 (one that cannot be opened: skipped or fatal, per on_error)."""
    out = {}
    for p in files:
        try:
            out[p] = hashlib.sha256(p.read_bytes()).digest()
        except OSError as e:
            _bad(p, SslscaleError(f"cannot read audio file {p}: {reason(e)}"), on_error, skipped)
    return out


def _first(files: list[Path], digests: dict[Path, bytes]) -> list[Path]:
    """`files` (readable ones) less those whose bytes equal an earlier one's."""
    seen, out = set(), []
    for p in (p for p in files if p in digests):
        if digests[p] not in seen:
            seen.add(digests[p])
            out.append(p)
    return out


def _bad(path: Path, err: SslscaleError, on_error: str, skipped: list[str]) -> None:
    if on_error == "fail":
        raise SslscaleError(f"{err}; fix or remove it, or pass --on-error skip") from None
    skipped.append(str(path))


def _clips(files: list[Path], labels: dict[Path, int], on_error: str, skipped: list[str],
           seen: set) -> Iterator[Sample]:
    """Each file's clip and label, less the clips whose samples are in `seen` (shared by the splits, which are
    written in turn: a recording under two names is kept once, on the side written first)."""
    for p in files:
        try:
            clip = read_clip(p)
        except SslscaleError as e:
            _bad(p, e, on_error, skipped)
            continue
        digest = hashlib.sha256(clip.tobytes()).digest()
        if digest not in seen:
            seen.add(digest)
            yield (clip,), labels.get(p)


def _splits(parts: dict[str, list[Path]], labels: dict[Path, int], on_error: str, skipped: list[str]) -> dict:
    """Source.splits: each split's expected count (before duplicates of decoded samples drop out) and clips."""
    seen: set = set()
    return {split: (len(part), _clips(part, labels, on_error, skipped, seen)) for split, part in parts.items()
            if part}


def _folder(root: Path, on_error: str, test_fraction: float, seed: int) -> Source:
    files = folder_files(root, AUDIO_EXTENSIONS, "audio files")
    skipped: list[str] = []
    files = _first(files, _digests(files, on_error, skipped))
    classes, labels = folder_labels(root, files)
    parts = shuffled(folder_splits(root, files, classes, labels, test_fraction, seed), seed)
    return Source("audio folder", str(root), _field(), classes, _splits(parts, labels, on_error, skipped), skipped)


def spoken_names(root: Path) -> list[tuple[Path, str, str]]:
    """(file, picture base name, language) of every spoken name under a Tux Paint stamps folder, in path order:
    `frog-1_desc_fr.ogg` -> (..., "frog", "fr"); no language suffix is English."""
    out = []
    for p in sorted(root.rglob("*_desc*.ogg"), key=lambda p: p.relative_to(root).as_posix()):
        match = SPOKEN.match(p.name)
        if match and p.is_file():
            out.append((p, re.sub(r"(-\d+)+$", "", match["stamp"]), match["lang"] or "en"))
    return out


def _tuxpaint(path, on_error: str, test_fraction: float, seed: int) -> Source:
    root = Path(path or TUXPAINT_DIR).absolute()
    named = spoken_names(root) if root.is_dir() else []
    if not named:
        raise SslscaleError(f"no spoken names (<stamp>_desc[_<lang>].ogg) under {root}: install the Debian package "
                            "tuxpaint-stamps-default (make tuxpaint), or pass --path to a copy of its stamps folder")
    languages = {p: lang for p, _, lang in named}
    skipped: list[str] = []
    counts: dict[str, int] = {}
    digests = _digests([p for p, _, _ in named], on_error, skipped)  # each file read once
    for p in _first([p for p, _, _ in named], digests):
        counts[languages[p]] = counts.get(languages[p], 0) + 1
    classes = sorted(lang for lang, n in counts.items() if n >= MIN_CLIPS)  # distinct files of each language
    index = {lang: i for i, lang in enumerate(classes)}
    kept = set(_first([p for p, _, lang in named if lang in index], digests))
    named = [(p, stamp, lang) for p, stamp, lang in named if p in kept]
    stamps = sorted({stamp for _, stamp, _ in named})
    order = np.random.default_rng(seed).permutation(len(stamps))
    test = {stamps[i] for i in order[:int(round(test_fraction * len(stamps)))]}
    parts = shuffled({"train": [p for p, stamp, _ in named if stamp not in test],
                       "test": [p for p, stamp, _ in named if stamp in test]}, seed)
    labels = {p: index[lang] for p, _, lang in named}
    return Source("tuxpaint_speech", str(root), _field(), classes, _splits(parts, labels, on_error, skipped), skipped)


def open_source(name: str, *, on_error: str, test_fraction: float, seed: int, path=None) -> Source:
    """tuxpaint_speech (from `path`, default TUXPAINT_DIR), or a folder of audio files."""
    if name == "tuxpaint_speech":
        return _tuxpaint(path, on_error, test_fraction, seed)
    if path is not None:
        raise path_not_taken(name)
    return _folder(Path(name).absolute(), on_error, test_fraction, seed)


PROVIDER = Provider("audio", ("tuxpaint_speech",), AUDIO_EXTENSIONS, ("path",), open_source)
