"""Using what was trained: `sslscale embed` turns pictures, lines of text, audio files or a prepared corpus into
vectors with an exported encoder, one Parquet row per input.

    embed("run/encoder.safetensors", "photos/", "photos.parquet")           # a folder of pictures
    embed("run/encoder.safetensors", "notes.txt", "notes.parquet")          # a text file, one document a line
    embed("run/encoder.safetensors", "data/fmnist", "fmnist.parquet", workers=2)   # a prepared corpus, on Ray

What the file holds decides the space: an encoder alone gives its features (what kNN and the probes read); an
image-text model (CLIP's export: both towers) gives the normalised joint embedding of its image or text tower, so
pictures and sentences embedded apart can be compared. Inputs are prepared as the corpus kind the model was trained
on prepares them: pictures centre-cropped to a square (sources/images.py) or, for an image-text model, padded with
white (sources/pairs.py), at the encoder's size and channels; text through the tokenizer the file carries (or
`tokenizer=`, a prepared corpus, for files exported before they carried one), its ids then [SEP]; audio read at
16 kHz (sources/audio.py). A prepared corpus gives each split's samples of the model's kind, keyed by split and id.

Rows: `path` (a file), `line` (1-based, of a text file) or `split` and `id` (a corpus), then `vector`
(float32, fixed size). Inputs are embedded `batch_size` at a time with a progress line on long inputs; with
`workers` > 0 Ray Data embeds them in that many actors (data/stream.py: map_in_actors). A file that cannot be
decoded stops the run in one line naming it (on_error="fail") or is left out and listed (on_error="skip"). The
output is written whole, atomically, and an existing file is never replaced unless `overwrite`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sslscale.data import corpus
from sslscale.data.modalities import data_field
from sslscale.data.modalities.audio import PAD as AUDIO_PAD
from sslscale.data.modalities.text import SEP
from sslscale.errors import SslscaleError, reason

LARGE = 2000  # inputs above which the progress line shows


class Embedder:
    """An exported file ready to embed: `kind` (image, text or audio: what `prepare` makes and `__call__` takes),
    `prepare(item)` -> one input array, `__call__(arrays)` -> float32 vectors (n, D)."""

    def __init__(self, path: str, kind: str | None = None, tokenizer: str | None = None):
        from sslscale.data.sources.text import load_tokenizer as corpus_tokenizer
        from sslscale.training.export import has_method, load_encoder, load_model, load_tokenizer

        self.model = load_model(path) if has_method(path) else None
        self.encoder = self.model.encoder if self.model is not None else load_encoder(path)
        self.kind = kind or self.encoder.modality
        self.readable = {self.encoder.modality, *(self.model.tower_modules() if self.model is not None else {})}
        if self.kind not in self.readable:
            raise SslscaleError(f"{path} embeds {' and '.join(sorted(self.readable))}, not {self.kind}: pass inputs "
                                "of that kind")
        self.tokenizer = corpus_tokenizer(tokenizer) if tokenizer else load_tokenizer(path)
        if self.kind == "text" and self.tokenizer is None:
            raise SslscaleError(f"{path} carries no tokenizer (exported before files carried one): pass --tokenizer "
                                "with the prepared corpus it was trained on")
        self.reader = (self.model.text if self.kind == "text" and self.model is not None else self.encoder)

    def prepare(self, item) -> np.ndarray:
        """One input (a file path, or a line of text) -> the array the model takes; SslscaleError when it cannot
        be read."""
        if self.kind == "text":
            ids = self.tokenizer.encode(item, add_special_tokens=False).ids[:self.reader.max_length - 1] + [SEP]
            return np.pad(np.asarray(ids, np.int64), (0, self.reader.max_length - len(ids)))
        if self.kind == "audio":
            from sslscale.data.sources.audio import read_clip

            clip = read_clip(Path(item), self.encoder.max_samples)
            return np.pad(clip, (0, self.encoder.max_samples - len(clip)), constant_values=AUDIO_PAD)
        return self._picture(Path(item))

    def _picture(self, path: Path) -> np.ndarray:
        from PIL import Image

        from sslscale.data.sources.images import square_resize
        from sslscale.data.sources.pairs import picture

        size, channels = self.encoder.image_size, self.encoder.in_channels
        if self.model is not None:  # an image-text model: trained on pictures padded with white
            rgb = picture(path, size)
            return rgb if channels == 3 else rgb.mean(2, keepdims=True).round().astype(np.uint8)
        try:
            with Image.open(path) as im:
                img = square_resize(im.convert("L" if channels == 1 else "RGB"), size)
        except Exception as e:  # PIL raises many exception types for bad files
            raise SslscaleError(f"cannot decode image {path}: {reason(e)}") from None
        return np.asarray(img, np.uint8).reshape(size, size, channels)

    @torch.no_grad()
    def __call__(self, arrays: np.ndarray) -> np.ndarray:
        from sslscale.data.modalities import KINDS

        x = KINDS[self.kind](self.kind, {}).to_encoder(arrays)  # a batch's tensor needs no manifest entry
        if self.model is None:
            return self.encoder(x).float().numpy()
        if self.kind == "text":
            return self.model.embed_texts(x).float().numpy()
        return self.model.embed_images(x)[1].float().numpy()


# ---------------------------------------------------------------- inputs

def inputs(source: str, kind: str) -> tuple[str, list]:
    """(key column, the items to embed) of an input: a prepared corpus (its samples, read later), a text file
    (lines), or a folder of files of `kind` (paths, in path order)."""
    from sslscale.data.sources.audio import AUDIO_EXTENSIONS
    from sslscale.data.sources.images import IMAGE_EXTENSIONS
    from sslscale.data.splits import folder_files

    root = Path(source)
    if (root / corpus.MANIFEST).is_file():
        return "corpus", []
    if root.is_file():
        if kind != "text":
            raise SslscaleError(f"{source} is a file but the model embeds {kind}: pass a folder of them")
        lines = root.read_text(encoding="utf-8-sig", errors="replace").splitlines()
        return "line", [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not root.is_dir():
        raise SslscaleError(f"input {source} does not exist: pass a folder, a text file or a prepared corpus")
    if kind == "text":
        raise SslscaleError(f"{source} is a folder but the model embeds text: pass a text file, one document a line")
    suffixes = AUDIO_EXTENSIONS if kind == "audio" else IMAGE_EXTENSIONS
    return "path", [(str(p), str(p)) for p in folder_files(root.absolute(), suffixes, f"{kind} files")]


def _corpus_rows(folder: str, kind: str) -> tuple[list, np.ndarray]:
    """((split, id) of every sample, their arrays) of a prepared corpus's field of `kind`."""
    manifest = corpus.load_manifest(folder)
    data_field(manifest, folder, kind)  # one line when it holds no such field
    keys, arrays = [], []
    for split in manifest["splits"]:
        ids, data, _ = corpus.read_split(folder, split, with_labels=False, kind=kind)
        keys += [(split, int(i)) for i in ids]
        arrays.append(data)
    return keys, np.concatenate(arrays)


# ---------------------------------------------------------------- embed

def embed(encoder: str, source: str, out: str, *, workers: int = 0, batch_size: int = 256, on_error: str = "fail",
          tokenizer: str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Embed `source` with the exported `encoder` into the Parquet file `out` (module docstring); returns
    {"rows", "dim", "skipped", "out"}."""
    if on_error not in ("fail", "skip") or batch_size < 1 or workers < 0:
        raise SslscaleError(f"on_error {on_error!r}, batch size {batch_size}, workers {workers}: use fail or skip, a "
                            "positive batch and 0 or more workers")
    if not out.endswith(".parquet") or (os.path.exists(out) and not overwrite):
        raise SslscaleError(f"--out {out}: name a .parquet file that does not exist yet (or pass --overwrite)")
    model = Embedder(encoder, "text" if Path(source).is_file() else None, tokenizer)  # a file: lines of text
    key, items = inputs(source, model.kind)
    if key == "corpus":
        keys, arrays = _corpus_rows(source, model.kind)
        vectors, skipped = _batched(model, arrays, batch_size, progress), []
    elif workers:
        keys, vectors, skipped = _on_ray(items, {"encoder": encoder, "kind": model.kind, "tokenizer": tokenizer,
                                                 "on_error": on_error}, batch_size, workers)
    else:
        keys, vectors, skipped = embed_items(model, items, batch_size, on_error, progress)
    _write(out, key, keys, vectors)
    return {"rows": len(keys), "dim": int(vectors.shape[1]) if len(vectors) else 0,
            "skipped": [str(k) for k in skipped], "out": out}


def _batched(model: Embedder, arrays: np.ndarray, batch_size: int, progress: bool) -> np.ndarray:
    shown = corpus.Progress(len(arrays), progress and len(arrays) > LARGE, "embed")
    out = []
    for i in range(0, len(arrays), batch_size):
        out.append(model(arrays[i:i + batch_size]))
        shown.advance(len(out[-1]))
    shown.report()
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embed_items(model: Embedder, items: list, batch_size: int, on_error: str,
                progress: bool = False) -> tuple[list, np.ndarray, list[str]]:
    """(keys, vectors, skipped) of (key, item) pairs: each item prepared (a bad one fails or is skipped), then
    embedded in batches."""
    keys, arrays, skipped = [], [], []
    for k, item in items:
        try:
            arrays.append(model.prepare(item))
            keys.append(k)
        except SslscaleError as e:
            if on_error == "fail":
                raise SslscaleError(f"{e}: fix or remove it, or pass --on-error skip") from None
            skipped.append(k)
    if not arrays:
        return keys, np.zeros((0, 0), np.float32), skipped
    return keys, _batched(model, np.stack(arrays), batch_size, progress), skipped


class EmbedActor:
    """A Ray Data actor (stream.map_in_actors): the exported model loaded once, then batches of (key, item) rows;
    a row per item, `ok` False (and no vector) for one left out."""

    def __init__(self, encoder: str, kind: str, tokenizer: str | None, on_error: str):
        torch.set_num_threads(1)  # one CPU per actor
        self.model, self.on_error = Embedder(encoder, kind, tokenizer), on_error

    def __call__(self, batch: dict) -> dict:
        keys, vectors, skipped = embed_items(self.model, list(zip(batch["key"].tolist(), batch["item"].tolist())),
                                             len(batch["key"]), self.on_error)
        return {"key": keys + skipped, "vector": [v.tolist() for v in vectors] + [[]] * len(skipped),
                "ok": [True] * len(keys) + [False] * len(skipped)}


def _on_ray(items: list, actor_kwargs: dict, batch_size: int, workers: int) -> tuple[list, np.ndarray, list]:
    """embed_items across `workers` Ray Data actors; rows in key order."""
    from sslscale.data.stream import map_in_actors
    from sslscale.runtime.cluster import ensure_ray

    ensure_ray()
    rows = sorted(map_in_actors([{"key": k, "item": i} for k, i in items], EmbedActor, actor_kwargs, batch_size,
                                workers), key=lambda r: r["key"])
    good = [r for r in rows if r["ok"]]
    vectors = np.asarray([r["vector"] for r in good], np.float32) if good else np.zeros((0, 0), np.float32)
    return [r["key"] for r in good], vectors, [r["key"] for r in rows if not r["ok"]]


def _write(out: str, key: str, keys: list, vectors: np.ndarray) -> None:
    """The rows as Parquet, written to a temporary name and renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"split": [k[0] for k in keys], "id": [k[1] for k in keys]} if key == "corpus" else {key: keys}
    dim = vectors.shape[1] if len(vectors) else 0
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1))
    table = pa.table({**columns, "vector": pa.FixedSizeListArray.from_arrays(flat, dim)})
    tmp = out + ".partial"
    pq.write_table(table, tmp)
    os.replace(tmp, out)
