"""Masked language modelling: BERT's masking drawn as the image views are, the loss against a reference formula and
over 2 gloo workers with unequal masked counts, the text encoder's padding and causal masks, and a tiny model that
learns."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distributed import spawn_gloo
from sslscale.data.modalities.text import TextLayout, mask_tokens
from sslscale.encoders.text import TextTransformer
from sslscale.methods.base import token_loss
from sslscale.methods.mlm import IGNORE, MLM, MLMSection

VOCAB = 50


def _passages(n=64, length=24, seed=0):
    """Token ids of plain words (5..VOCAB-1), a [SEP] (3) in the middle and padding (0) at different lengths."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, VOCAB, (n, length))
    tokens[:, length // 2] = 3
    for i, pad in enumerate(rng.integers(0, length // 3, n)):
        tokens[i, length - pad :] = 0
    return tokens


def test_masking_follows_bert_and_is_a_function_of_seed_epoch_and_id():
    tokens, ids = _passages(n=2000), np.arange(2000)
    inputs, targets = mask_tokens(tokens, ids, seed=3, epoch=1, vocab_size=VOCAB)
    chosen = targets != IGNORE
    plain = tokens >= 5
    assert (chosen.sum(axis=1) == np.maximum(1, np.rint(0.15 * plain.sum(axis=1)))).all()  # exactly 15% per row
    assert not (chosen & ~plain).any() and (targets[chosen] == tokens[chosen]).all()  # never [PAD] or [SEP]
    assert (inputs[~chosen] == tokens[~chosen]).all()
    masked, kept = (inputs[chosen] == 4).mean(), (inputs[chosen] == tokens[chosen]).mean()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1 - 0.1 / (VOCAB - 5)) < 0.02  # 80/10/10
    assert ((inputs[chosen] >= 5) | (inputs[chosen] == 4)).all()  # a random replacement is a plain id
    again = mask_tokens(tokens[::-1], ids[::-1], seed=3, epoch=1, vocab_size=VOCAB)  # another order: same rows
    assert np.array_equal(again[0][::-1], inputs) and np.array_equal(again[1][::-1], targets)
    assert not np.array_equal(mask_tokens(tokens, ids, seed=3, epoch=2, vocab_size=VOCAB)[1], targets)
    as_stored = mask_tokens(tokens.astype(np.uint16), ids, seed=3, epoch=1, vocab_size=VOCAB)  # the shards' dtype
    assert np.array_equal(as_stored[0], inputs) and np.array_equal(as_stored[1], targets)


def _reference(logits, targets):
    """Cross-entropy averaged over the chosen positions, written out in float64."""
    total, count = 0.0, 0
    for i in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if targets[i, t] != IGNORE:
                row = logits[i, t].double()
                total += -(row[targets[i, t]] - row.exp().sum().log()).item()
                count += 1
    return total / count


def test_loss_equals_the_reference_formula():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 10, VOCAB), torch.full((6, 10), IGNORE)
    targets[torch.rand(6, 10) < 0.3] = 7
    targets[0, 0] = 9
    chosen = targets != IGNORE
    loss, acc, perplexity = token_loss(logits[chosen], targets[chosen])
    assert loss.item() == pytest.approx(_reference(logits, targets), rel=1e-6)
    assert perplexity.item() == pytest.approx(math.exp(_reference(logits, targets)), rel=1e-6)
    assert acc.item() == pytest.approx((logits[chosen].argmax(-1) == targets[chosen]).float().mean().item())
    assert token_loss(logits[chosen], logits[chosen].argmax(-1))[1].item() == 1.0


def _loss(logits, targets):
    chosen = targets != IGNORE
    return token_loss(logits[chosen], targets[chosen])


def _worker(rank, world, logits, targets):
    part = logits.chunk(world)[rank].clone().requires_grad_()
    loss, acc, perplexity = _loss(part, targets.chunk(world)[rank])
    loss.backward()
    return loss.item(), acc.item(), part.grad, perplexity.item()


def test_two_workers_with_unequal_masked_counts_equal_one_process():
    """Worker 0 holds many chosen tokens, worker 1 few: the averaged losses and the gradients (DeepSpeed's average
    of the workers') equal the single-process loss and gradient on the whole batch."""
    torch.manual_seed(1)
    logits, targets = torch.randn(8, 12, VOCAB), torch.full((8, 12), IGNORE)
    targets[:4][torch.rand(4, 12) < 0.6] = 5
    targets[4:, :2] = 11
    results = spawn_gloo(_worker, logits, targets, world=2)
    whole = logits.clone().requires_grad_()
    loss, acc, perplexity = _loss(whole, targets)
    loss.backward()
    assert sum(r[0] for r in results) / 2 == pytest.approx(loss.item(), rel=1e-5)
    assert [r[1] for r in results] == pytest.approx([acc.item()] * 2)
    assert [r[3] for r in results] == pytest.approx([perplexity.item()] * 2, rel=1e-5)
    assert torch.allclose(torch.cat([r[2] for r in results]) / 2, whole.grad, atol=1e-7)


def test_text_encoder_ignores_padding_and_is_causal_when_asked():
    torch.manual_seed(0)
    tokens = torch.as_tensor(_passages(n=4, length=16))
    tokens[0, 6:] = 0
    enc = TextTransformer(vocab_size=VOCAB, max_length=16, dim=32, depth=2, heads=2).eval()
    assert torch.allclose(enc(tokens[:1, :6]), enc(tokens[:1]), atol=1e-5)  # padding changes nothing pooled
    causal = TextTransformer(vocab_size=VOCAB, max_length=16, dim=32, depth=2, heads=2, causal=True).eval()
    later = tokens[1:2].clone()
    later[0, 10:] = 7
    a, b = causal.forward_tokens(tokens[1:2]), causal.forward_tokens(later)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5) and not torch.allclose(a[:, 10:], b[:, 10:])
    assert enc.spec()["name"] == "text" and enc.spec()["kwargs"]["causal"] is False


def test_a_tiny_model_learns_to_fill_in_masked_tokens():
    """Passages where a word predicts the next (w, w + 1, ...): 150 Adam steps (~1 s) bring the masked-token loss far
    below the uniform guess's log(V) and the accuracy far above chance; the logs are what MLflow receives."""
    torch.manual_seed(0)
    start = np.random.default_rng(0).integers(5, VOCAB - 20, (32, 1))
    tokens = start + np.arange(16)
    model = MLM(TextTransformer(vocab_size=VOCAB, max_length=16, dim=32, depth=2, heads=2), MLMSection())
    optimizer, losses = torch.optim.Adam(model.parameters(), lr=5e-3), []
    for step in range(150):
        inputs, targets = mask_tokens(tokens, np.arange(32), seed=0, epoch=step, vocab_size=VOCAB)
        out = model({"tokens": torch.as_tensor(inputs), "targets": torch.as_tensor(targets)}, step)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert np.mean(losses[-10:]) < 0.5 * math.log(VOCAB) < losses[0] and out["masked_acc"].item() > 0.3
    assert out["perplexity"].item() == pytest.approx(math.exp(out["loss"].item()), rel=1e-5)
    assert out["embeddings"].shape == (32, 32) and not out["embeddings"].requires_grad
    cfg = SimpleNamespace(method=SimpleNamespace(chosen=MLMSection(mask_ratio=0.2)))  # until mlm is registered
    assert MLM.views(cfg, {"text": 16}) == {"text": TextLayout(token_mask_ratio=0.2)}
    assert MLM.inputs(cfg, {"text": 16}) == {"tokens": "ids", "targets": "ids"}
