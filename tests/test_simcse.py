"""Unsupervised SimCSE: the loss against a reference formula, the whole method on 2 gloo workers (negatives gathered
across them), dropout masks that are a function of (step, rank) and leave the caller's RNG alone, and a tiny model
whose two dropout passes learn to find each other."""
import math

import numpy as np
import pytest
import torch

from distributed import spawn_gloo
from sslscale.config import Config
from sslscale.encoders.text import TextTransformer
from sslscale.methods import build_method
from sslscale.methods.simcse import SimCSE, SimCSESection, simcse_loss

VOCAB = 50


def _simcse(seed=0):
    torch.manual_seed(seed)
    return SimCSE(TextTransformer(vocab_size=VOCAB, max_length=12, dim=32, depth=2, heads=2, dropout=0.1),
                  SimCSESection())


def _tokens(n=8, seed=0):
    tokens = torch.as_tensor(np.random.default_rng(seed).integers(5, VOCAB, (n, 12)))
    tokens[::2, 8:] = 0  # padding
    return tokens


def test_loss_equals_the_reference_formula():
    torch.manual_seed(0)
    z, z2 = torch.randn(6, 5), torch.randn(6, 5)
    total = 0.0
    for i in range(6):
        sims = [(z[i] @ z2[j] / (z[i].norm() * z2[j].norm())).item() / 0.05 for j in range(6)]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    loss, acc = simcse_loss(z, z2, 0.05)
    assert loss.item() == pytest.approx(total / 6, rel=1e-5)
    assert simcse_loss(z, z, 0.05)[1].item() == 1.0  # identical passes: each finds its own


def test_dropout_masks_are_a_function_of_step_and_rank_and_leave_the_rng_alone():
    model, tokens = _simcse(), _tokens()
    state = torch.random.get_rng_state()
    a, b = model({"tokens": tokens}, step=3), model({"tokens": tokens}, step=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a["loss"], b["loss"]) and a["loss"].item() != model({"tokens": tokens}, step=4)["loss"].item()
    first, second = model.encoder(torch.cat([tokens, tokens])).chunk(2)
    assert not torch.allclose(first, second)  # the two passes differ by their dropout masks alone


def _worker(rank, world, tokens):
    model = _simcse()
    out = model({"tokens": tokens.chunk(world)[rank]}, step=0)
    out["loss"].backward()
    return out["loss"].item(), {k: p.grad for k, p in model.named_parameters()}


def test_two_workers_see_every_workers_negatives():
    """Each worker's 4 passages against all 8 second passes: the averaged losses and gradients equal one process's
    on the 8, with each worker's dropout masks (gradients flow back across workers through the gathered passes)."""
    tokens = _tokens()
    results = spawn_gloo(_worker, tokens, world=2)
    model, parts = _simcse(), []
    for rank in range(2):  # each worker's two passes, re-made with its (step 0, rank) dropout seed
        with torch.random.fork_rng():
            torch.manual_seed(rank)
            parts.append(model.encoder(torch.cat([tokens.chunk(2)[rank]] * 2)).chunk(2))
    first = torch.cat([p[0] for p in parts])
    second = torch.cat([p[1] for p in parts])
    loss, _ = simcse_loss(model.head(first), model.head(second), 0.05)
    loss.backward()
    assert sum(r[0] for r in results) / 2 == pytest.approx(loss.item(), rel=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose((results[0][1][name] + results[1][1][name]) / 2, p.grad, atol=1e-5), name


def test_the_method_fixes_dropout_and_a_tiny_model_learns():
    cfg = Config().override(["method.name=simcse", "model.encoder=text", "model.dim=32", "model.vit_depth=1",
                             "model.heads=2"])
    built = build_method(cfg, vocab_size=VOCAB, max_length=12)
    assert built.encoder.dropout == 0.1 and built.encoder.spec()["kwargs"]["dropout"] == 0.1
    assert SimCSE.inputs(cfg, {"text": 12}) == {"tokens": "ids"}
    model = _simcse()
    optimizer, accs = torch.optim.Adam(model.parameters(), lr=3e-3), []
    for step in range(60):
        out = model({"tokens": _tokens(n=16, seed=step)}, step)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        accs.append(out["pair_acc"].item())
    assert np.mean(accs[-10:]) > 0.9 and out["loss"].item() < math.log(16) / 2
