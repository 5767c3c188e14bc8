"""Text: a field of kind "text", passages of token ids (the manifest's dtype, at most max_length of them, below
vocab_size; the corpus's tokenizer.json beside it), padded with 0 to max_length as int64. Views are `text_views`
here (BERT's masking and ALBERT's sentence order, which the text methods share, made on Ray Data's tasks), the
encoders take the ids as they are, and the no-learning baseline is TF-IDF."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sslscale.data.modalities.base import Layout, Modality
from sslscale.data.views import uniforms
from sslscale.errors import SslscaleError

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # the tokenizer's special tokens, ids 0-4 in this order
PAD, UNK, CLS, SEP, MASK = range(len(SPECIAL))
TOKENIZER = "tokenizer.json"  # a text corpus's tokenizer, beside its manifest
FIRST_PLAIN = len(SPECIAL)  # ids below this are special tokens: never masked, left out of TF-IDF


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


def mask_tokens(tokens: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int, ratio: float = 0.15,
                vocab_size: int, first_plain: int = FIRST_PLAIN, view: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masked-LM input (Devlin et al. 2019, sec. 3.1 and appendix A.1): in each row of `tokens` (N, L) int,
    round(ratio x its plain tokens) of them (at least 1; ids below `first_plain` are [PAD], [CLS], [SEP], ... and
    never chosen) are predicted; each chosen one becomes [MASK] (id 4) with probability 0.8, a random plain id with
    0.1, and stays with 0.1. Returns (inputs (N, L) int64, targets (N, L) int64: the original id where chosen, -100
    elsewhere). A function of (seed, epoch, sample id, view) through `uniforms`, as the image views are."""
    tokens = np.asarray(tokens, np.int64)  # shards hold uint16, where -100 would wrap
    n, length = tokens.shape
    u = uniforms(seed, epoch, ids, view, 3 * length).reshape(n, 3, length)  # choice order, replacement, random id
    plain = tokens >= first_plain
    count = np.maximum(1, np.rint(ratio * plain.sum(axis=1))).astype(np.int64) * plain.any(axis=1)  # (N,)
    order = np.where(plain, u[:, 0], 2.0)  # plain tokens sorted first, by their uniform
    rank = np.argsort(np.argsort(order, axis=1, kind="stable"), axis=1, kind="stable")
    chosen = rank < count[:, None]  # (N, L)
    targets = np.where(chosen, tokens, -100).astype(np.int64)
    random_ids = first_plain + np.floor(u[:, 2] * (vocab_size - first_plain)).astype(np.int64)
    inputs = np.where(chosen & (u[:, 1] < 0.8), MASK, np.where(chosen & (u[:, 1] < 0.9), random_ids, tokens))
    return inputs.astype(np.int64), targets


def swap_segments(tokens: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int, sep: int = SEP,
                  view: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """ALBERT's sentence-order input (Lan et al. 2020, sec. 3.1): each passage of `tokens` (N, L) int, padding (0)
    at its end, is two consecutive segments, split after the [SEP] (`sep`) nearest its middle (a passage of one
    sentence: in the middle of its words, its closing [SEP] staying last); with probability 1/2 the two swap places.
    Prepared passages end in [SEP] (text.passages), so a swapped passage ends as an unswapped one does. Returns
    (passages (N, L) int64, order (N,) int64: 1 where swapped). A function of (seed, epoch, sample id, view) through `uniforms`."""
    tokens = np.asarray(tokens, np.int64)
    n, length = tokens.shape
    words = (tokens != 0).sum(axis=1)  # (N,) non-padding tokens
    position = np.arange(length)
    boundary = (tokens == sep) & (position < words[:, None] - 1)  # splits after here leave both segments non-empty
    several = boundary.any(axis=1)
    last = np.take_along_axis(tokens, np.maximum(words - 1, 0)[:, None], axis=1)[:, 0]
    end = np.where(several | (last != sep), words, words - 1)  # one sentence: its halves swap before its [SEP]
    split = np.where(several, np.argmin(np.where(boundary, np.abs(position + 1 - words[:, None] / 2), np.inf),
                                        axis=1) + 1, end // 2)  # (N,) length of the first segment
    order = ((uniforms(seed, epoch, ids, view, 1)[:, 0] < 0.5) & (split > 0)).astype(np.int64)
    shift = np.where(order == 1, split, 0)  # swapped: the second segment, then the first (a rotation)
    source = (position + shift[:, None]) % np.maximum(end, 1)[:, None]
    return np.where(position < end[:, None], np.take_along_axis(tokens, source, axis=1), tokens), order


@dataclass(frozen=True)
class TextLayout(Layout):
    """The views a text method asks of a text field: with `sentence_order` ALBERT's segment swap, with
    `token_mask_ratio` > 0 BERT's masking of that share of each passage's plain tokens."""

    token_mask_ratio: float = 0.0
    sentence_order: bool = False

    def fields(self) -> dict[str, str]:
        """tokens, then order (sentence order) and targets (masking) where asked: all integer ids."""
        return {"tokens": "ids", **({"order": "ids"} if self.sentence_order else {}),
                **({"targets": "ids"} if self.token_mask_ratio > 0 else {})}


def text_views(tokens: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int, vocab_size: int,
               layout: TextLayout) -> dict[str, np.ndarray]:
    """A text method's fields from passages' token ids (N, L), padded with 0: "tokens" (N, L) int64; with
    sentence_order ALBERT's segment swap first (swap_segments: "tokens" swapped or not, and "order"); with
    token_mask_ratio > 0 then BERT's masking (mask_tokens: "tokens" corrupted and "targets")."""
    out = {"tokens": np.asarray(tokens, np.int64)}
    if layout.sentence_order:
        out["tokens"], out["order"] = swap_segments(out["tokens"], ids, seed=seed, epoch=epoch)
    if layout.token_mask_ratio > 0:
        out["tokens"], out["targets"] = mask_tokens(out["tokens"], ids, seed=seed, epoch=epoch,
                                                    ratio=layout.token_mask_ratio, vocab_size=vocab_size)
    return out


class Text(Modality):
    """A field of passages of token ids (dtype, max_length, vocab_size in the manifest)."""

    kind = "text"
    layout = TextLayout
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

    def views(self, samples, ids, *, seed, epoch, layout: TextLayout) -> dict[str, np.ndarray]:
        return text_views(samples, ids, seed=seed, epoch=epoch, vocab_size=self.entry["vocab_size"], layout=layout)

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
        from sslscale import storage  # here: pyarrow, which a trainer without a corpus (gpu_check) may lack

        if corpus_dir and storage.read_bytes(storage.join(target_dir, TOKENIZER)) != storage.read_bytes(
                storage.join(corpus_dir, TOKENIZER)):
            raise SslscaleError(f"transfer.target {where} was tokenised with another tokenizer than corpus "
                                f"{corpus_dir}: prepare it with `sslscale data prepare SOURCE --tokenizer "
                                f"{corpus_dir}`")
        if target.size > self.size:
            raise SslscaleError(f"transfer.target {where} holds passages of up to {target.size} tokens but the "
                                f"encoder takes the corpus' {self.size}: prepare it with --seq-len {self.size}")

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
