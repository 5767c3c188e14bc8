"""Sentence-order prediction: ALBERT's segment swap drawn as the image views are and checked against a split written
out by hand, the loss against its formula, the whole method on 2 gloo workers, and a tiny model that learns the
order."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed import spawn_gloo
from sslscale.data.modalities.text import TextLayout, mask_tokens, swap_segments, text_views
from sslscale.encoders.text import TextTransformer
from sslscale.methods.mlm import IGNORE
from sslscale.methods.sop import SOP, SOPSection

VOCAB, SEP = 50, 3


def _passage(rng, sentences, length):
    """Sentences of plain ids (5..VOCAB-1) of the given lengths, each followed by [SEP], padded with 0 to length."""
    ids = [t for n in sentences for t in [*rng.integers(5, VOCAB, n), SEP]]
    return ids + [0] * (length - len(ids))


def _by_hand(row):
    """(first segment, second segment, tail) of one passage as docs/text.md describes the split."""
    words = [t for t in row if t != 0]
    cuts = [i + 1 for i, t in enumerate(words[:-1]) if t == SEP]
    if cuts:
        split = min(cuts, key=lambda c: abs(c - len(words) / 2))
        return words[:split], words[split:], []
    body, tail = (words[:-1], [SEP]) if words and words[-1] == SEP else (words, [])
    return body[: len(body) // 2], body[len(body) // 2 :], tail


def test_segments_swap_as_albert_does_and_are_a_function_of_seed_epoch_and_id():
    rng = np.random.default_rng(0)
    shapes = [[3, 4, 2], [6], [2, 2, 2, 2], [1, 9], [5, 1]]
    tokens = np.array([_passage(rng, shapes[i % len(shapes)], 20) for i in range(1000)])
    tokens[7, 15:] = 0  # a piece cut from a longer sentence: no [SEP] at all
    tokens[7, :15] = rng.integers(5, VOCAB, 15)
    ids = np.arange(1000)
    swapped, order = swap_segments(tokens, ids, seed=3, epoch=1)
    assert abs(order.mean() - 0.5) < 0.05
    for row, out, o in zip(tokens, swapped, order):
        first, second, tail = _by_hand(list(row))
        expected = (second + first if o else first + second) + tail
        assert list(out) == expected + [0] * (len(row) - len(expected))
    again = swap_segments(tokens[::-1], ids[::-1], seed=3, epoch=1)  # another order: the same rows
    assert np.array_equal(again[0][::-1], swapped) and np.array_equal(again[1][::-1], order)
    assert not np.array_equal(swap_segments(tokens, ids, seed=3, epoch=2)[1], order)
    fields = text_views(tokens.astype(np.uint16), ids, seed=3, epoch=1, vocab_size=VOCAB,
                        layout=TextLayout(sentence_order=True, token_mask_ratio=0.15))  # swap, then mask the swapped
    assert list(fields) == ["tokens", "order", "targets"] and np.array_equal(fields["order"], order)
    masked = mask_tokens(swapped, ids, seed=3, epoch=1, vocab_size=VOCAB)
    assert np.array_equal(fields["tokens"], masked[0]) and np.array_equal(fields["targets"], masked[1])


def _sop(mask_ratio=0.15, seed=0):
    torch.manual_seed(seed)
    return SOP(TextTransformer(vocab_size=VOCAB, max_length=20, dim=32, depth=2, heads=2), SOPSection(mask_ratio))


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.array([_passage(rng, [3 + i % 4, 2 + i % 5], 20) for i in range(n)])
    layout = TextLayout(sentence_order=True, token_mask_ratio=0.15)
    return {k: torch.as_tensor(v) for k, v in text_views(tokens, np.arange(n), seed=seed, epoch=0, vocab_size=VOCAB,
                                                         layout=layout).items()}


def test_loss_is_the_order_cross_entropy_plus_the_masked_lm():
    model, batch = _sop().eval(), _batch()
    out = model(batch)
    h = model.encoder.forward_tokens(batch["tokens"])
    order = F.cross_entropy(model.order_head(model.encoder.pool(h, batch["tokens"])), batch["order"])
    chosen = batch["targets"] != IGNORE
    masked = F.cross_entropy(model.head(h[chosen]), batch["targets"][chosen])
    assert out["loss"].item() == pytest.approx(order.item() + masked.item(), rel=1e-5)
    assert out["order_loss"].item() == pytest.approx(order.item(), rel=1e-5)
    assert out["perplexity"].item() == pytest.approx(math.exp(masked.item()), rel=1e-5)
    alone = _sop(mask_ratio=0.0)
    assert alone.head is None and set(alone(batch)) == {"loss", "order_loss", "order_acc", "embeddings"}


def _worker(rank, world, batch):
    model = _sop()
    out = model({k: v.chunk(world)[rank] for k, v in batch.items()})
    out["loss"].backward()
    return out["loss"].item(), {k: p.grad for k, p in model.named_parameters()}


def test_two_workers_equal_one_process():
    """Each worker's half of the batch (different masked counts): the averaged losses and gradients equal one
    process's on the whole batch."""
    batch = _batch(n=8, seed=1)
    results = spawn_gloo(_worker, batch, world=2)
    model = _sop()
    out = model(batch)
    out["loss"].backward()
    assert sum(r[0] for r in results) / 2 == pytest.approx(out["loss"].item(), rel=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose((results[0][1][name] + results[1][1][name]) / 2, p.grad, atol=1e-6), name


def test_a_tiny_model_learns_the_order_of_two_sentences():
    """Passages whose first sentence uses low ids and second high ones: 150 Adam steps of SOP alone learn which
    came first (chance 0.5), on batches the model has not seen."""
    model, rng = _sop(mask_ratio=0.0), np.random.default_rng(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        first, second = rng.integers(5, 25, (32, 6)), rng.integers(25, VOCAB, (32, 6))
        tokens = np.concatenate([first, np.full((32, 1), SEP), second, np.full((32, 1), SEP)], axis=1)
        views = text_views(tokens, np.arange(32) + 32 * step, seed=0, epoch=0, vocab_size=VOCAB,
                           layout=TextLayout(sentence_order=True))
        out = model({k: torch.as_tensor(v) for k, v in views.items()}, step)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert out["order_acc"].item() > 0.9
    cfg = SimpleNamespace(method=SimpleNamespace(chosen=SOPSection(mask_ratio=0.0)))
    assert SOP.inputs(cfg, {"text": 20}) == {"tokens": "ids", "order": "ids"}
