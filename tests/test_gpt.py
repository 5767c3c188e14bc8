"""Next-token prediction: the loss against a reference formula written out position by position, the whole method on
2 gloo workers whose passages have different amounts of padding, the causal encoder the method fixes, and a tiny
model that learns."""
import math

import numpy as np
import pytest
import torch

from distributed import spawn_gloo
from sslscale.config import Config
from sslscale.encoders.text import TextTransformer
from sslscale.errors import SslscaleError
from sslscale.methods import build_method
from sslscale.methods.gpt import GPT, GPTSection

VOCAB = 50


def _gpt(seed=0, length=16):
    torch.manual_seed(seed)
    encoder = TextTransformer(vocab_size=VOCAB, max_length=length, dim=32, depth=2, heads=2, causal=True)
    return GPT(encoder, GPTSection())


def _padded(n, length, pads, seed=0):
    """Plain word ids (5..VOCAB-1) with a [SEP] (3) and pads[i] padding ids (0) at the end of row i."""
    tokens = torch.as_tensor(np.random.default_rng(seed).integers(5, VOCAB, (n, length)))
    tokens[:, 3] = 3
    for i, pad in enumerate(pads):
        tokens[i, length - pad :] = 0
    return tokens


def _reference(model, tokens):
    """Mean over every (passage, position t) whose next token is not padding of -log p(x_t+1 | x_0..x_t), each
    position's context fed to the model on its own (so no causal mask is needed), in float64."""
    total, count = 0.0, 0
    for i in range(len(tokens)):
        for t in range(tokens.shape[1] - 1):
            if tokens[i, t + 1] != 0:
                logits = model.head(model.encoder.forward_tokens(tokens[i : i + 1, : t + 1])[0, -1]).double()
                total += -(logits[tokens[i, t + 1]] - logits.exp().sum().log()).item()
                count += 1
    return total / count


def test_loss_equals_the_reference_formula():
    model = _gpt().eval()
    tokens = _padded(3, 10, [0, 4, 7])
    out = model({"tokens": tokens})
    assert out["loss"].item() == pytest.approx(_reference(model, tokens), rel=1e-5)
    assert out["perplexity"].item() == pytest.approx(math.exp(out["loss"].item()), rel=1e-5)
    assert out["embeddings"].shape == (3, 32) and not out["embeddings"].requires_grad


def _worker(rank, world, tokens):
    model = _gpt()
    out = model({"tokens": tokens.chunk(world)[rank]})
    out["loss"].backward()
    return out["loss"].item(), out["token_acc"].item(), {k: p.grad for k, p in model.named_parameters()}


def test_two_workers_with_unequal_padding_equal_one_process():
    """Worker 0's passages are full, worker 1's mostly padding: the averaged losses and gradients (DeepSpeed's
    average of the workers') equal one process's on the whole batch."""
    tokens = _padded(8, 12, [0, 0, 0, 1, 9, 10, 8, 6])
    results = spawn_gloo(_worker, tokens, world=2)
    model = _gpt()
    out = model({"tokens": tokens})
    out["loss"].backward()
    assert sum(r[0] for r in results) / 2 == pytest.approx(out["loss"].item(), rel=1e-5)
    assert [r[1] for r in results] == pytest.approx([out["token_acc"].item()] * 2)
    for name, p in model.named_parameters():
        assert torch.allclose((results[0][2][name] + results[1][2][name]) / 2, p.grad, atol=1e-6), name


def test_the_method_fixes_a_causal_encoder():
    cfg = Config().override(["method.name=gpt", "model.encoder=text", "model.dim=32", "model.vit_depth=1",
                             "model.heads=2"])
    model = build_method(cfg, vocab_size=VOCAB, max_length=16)
    assert model.encoder.causal and model.encoder.spec()["kwargs"]["causal"] is True  # export and transfer keep it
    assert GPT.inputs(cfg, {"text": 16}) == {"tokens": "ids"}
    with pytest.raises(SslscaleError, match="causal"):
        GPT(TextTransformer(vocab_size=VOCAB, max_length=16, dim=32, depth=1, heads=2), GPTSection())


def test_a_tiny_model_learns_to_predict_the_next_token():
    """Passages counting up from a random word (w, w + 1, ...): 100 Adam steps bring the loss far below the uniform
    guess's log(V) and next-token accuracy far above chance (the first step of each passage is a guess)."""
    model = _gpt()
    start = np.random.default_rng(0).integers(5, VOCAB - 20, (32, 1))
    tokens = torch.as_tensor(start + np.arange(16))
    optimizer, losses = torch.optim.Adam(model.parameters(), lr=5e-3), []
    for step in range(100):
        out = model({"tokens": tokens}, step)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert np.mean(losses[-10:]) < 0.5 * math.log(VOCAB) < losses[0] and out["token_acc"].item() > 0.5
