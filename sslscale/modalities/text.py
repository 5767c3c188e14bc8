"""Text: a field of kind "text", passages of token ids (the manifest's dtype, at most max_length of them, below
vocab_size; the corpus's tokenizer.json beside it), padded with 0 to max_length as int64; views are
views.text_views' (masking, sentence order), the encoders take the ids as they are, and the no-learning baseline
is TF-IDF."""
from __future__ import annotations

import numpy as np

from sslscale import storage
from sslscale.errors import SslscaleError
from sslscale.modalities.base import Modality
from sslscale.text import TOKENIZER
from sslscale.views import text_views

FIRST_PLAIN = 5  # ids below this are special ([PAD], [CLS], [SEP], [UNK], [MASK]): TF-IDF leaves them out


def decode_ids(data: bytes, entry: dict) -> np.ndarray:
    """A sample's `text.ids` bytes -> its token ids, int64 (max_length,) padded with 0; `entry` holds the text
    field's dtype, max_length and vocab_size (the manifest's). One line when the bytes are not such ids."""
    dtype = np.dtype(entry["dtype"]).newbyteorder("<")
    n = len(data) // dtype.itemsize
    ids = np.frombuffer(data, dtype) if len(data) % dtype.itemsize == 0 and 0 < n <= entry["max_length"] else None
    if ids is None or ids.max() >= entry["vocab_size"]:
        raise SslscaleError(f"{len(data)} bytes are not up to {entry['max_length']} {entry['dtype']} token ids below "
                            f"{entry['vocab_size']}: the corpus is damaged: check it with verify_shards and re-run "
                            "prepare")
    return np.pad(ids.astype(np.int64), (0, entry["max_length"] - n))


class Text(Modality):
    """A field of passages of token ids (dtype, max_length, vocab_size in the manifest)."""

    kind = "text"
    noun = "text"
    encoding = "ids"
    labelled_field = "tokens"
    labelled_input = "ids"

    @property
    def size(self) -> int:
        return self.entry["max_length"]

    def describe(self) -> str:
        return "token ids"

    def encode(self, sample) -> bytes:
        """A passage's token ids -> their little-endian bytes in the field's dtype."""
        return np.asarray(sample, np.dtype(self.entry["dtype"]).newbyteorder("<")).tobytes()

    def decode(self, data: bytes) -> np.ndarray:
        return decode_ids(data, self.entry)

    def blank(self) -> np.ndarray:
        return np.zeros(self.size, np.int64)

    def views(self, samples, ids, *, seed, epoch, layout) -> dict[str, np.ndarray]:
        return text_views(samples, ids, seed=seed, epoch=epoch, vocab_size=self.entry["vocab_size"], **layout)

    def encoder_input(self) -> dict:
        return {"vocab_size": self.entry["vocab_size"], "max_length": self.size}

    def to_encoder(self, batch: np.ndarray):
        import torch

        return torch.from_numpy(np.asarray(batch, np.int64))

    def to_engine(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, np.int64)

    def check_fits(self, encoder, batch: np.ndarray, where: str = "target") -> None:
        """One line when passages are longer than the encoder's positions or hold ids outside its vocabulary."""
        if batch.shape[1] > encoder.max_length or batch.max(initial=0) >= encoder.vocab_size:
            raise SslscaleError(f"{where} passages of {batch.shape[1]} tokens (ids up to {batch.max(initial=0)}) do "
                                f"not fit the encoder's {encoder.max_length} positions and {encoder.vocab_size} ids: "
                                "prepare the target with the pretraining corpus's --tokenizer and --seq-len")

    def check_target(self, target: Modality, target_dir: str, corpus_dir: str | None, where: str) -> None:
        if corpus_dir and storage.read_bytes(storage.join(target_dir, TOKENIZER)) != storage.read_bytes(
                storage.join(corpus_dir, TOKENIZER)):
            raise SslscaleError(f"transfer.target {where} was tokenised with another tokenizer than corpus "
                                f"{corpus_dir}: prepare it with `sslscale data prepare SOURCE --tokenizer "
                                f"{corpus_dir}`")

    def baseline(self, train_x: np.ndarray, test_x: np.ndarray):
        """TF-IDF (sklearn's smoothed idf from the train split, rows L2-normalised; special ids left out)."""
        import torch
        from scipy.sparse import csr_matrix
        from sklearn.feature_extraction.text import TfidfTransformer

        width = int(max(train_x.max(initial=0), test_x.max(initial=0))) + 1

        def counts(x: np.ndarray):
            rows = np.repeat(np.arange(len(x)), x.shape[1])
            keep = x.ravel() >= FIRST_PLAIN
            return csr_matrix((np.ones(keep.sum()), (rows[keep], x.ravel()[keep])), shape=(len(x), width))

        tfidf = TfidfTransformer().fit(counts(train_x))
        return "tfidf", *(torch.from_numpy(tfidf.transform(counts(x)).toarray()).float() for x in (train_x, test_x))

    def labelled(self, samples, view_ids, *, seed: int, views: dict) -> dict[str, np.ndarray]:
        return {"tokens": np.asarray(samples, np.int64)}  # text gets no augmentation
