"""wav2vec 2.0 (issue 28 part 2): the loss against its formula in float64, two workers against one process, the
encoder's padding, and a tiny model on real spoken names that learns while its codebook use rises."""
import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed import spawn_gloo
from sslscale.config import Config
from sslscale.data.modalities.audio import PAD, audio_views
from sslscale.data.sources.audio import TUXPAINT_DIR, read_clip, spoken_names
from sslscale.encoders.wav2vec import Wav2Vec
from sslscale.methods import build_method
from sslscale.methods.wav2vec2 import Wav2Vec2, Wav2Vec2Section

CROP = 8000  # half a second: 24 frames


def _clips(n: int) -> np.ndarray:
    """n real spoken names (Debian tuxpaint-stamps-default) in French, Russian and Spanish, PAD-padded to 1 s."""
    files = [p for p, _, lang in spoken_names(Path(TUXPAINT_DIR)) if lang in ("fr", "ru", "es")][:n]
    out = np.full((n, 16000), PAD, np.int16)
    for row, p in zip(out, files):
        clip = read_clip(p, 16000)
        row[:len(clip)] = clip
    return out


def _batch(clips: np.ndarray, epoch: int = 0, section: Wav2Vec2Section = Wav2Vec2Section(crop=CROP),
           ids: np.ndarray | None = None) -> dict:
    """The stream's fields for these clips: the method's own layout (Wav2Vec2.views) made by audio_views."""
    layout = Wav2Vec2.views(SimpleNamespace(method=SimpleNamespace(chosen=section)), {})["audio"]
    views = audio_views(clips, np.arange(len(clips)) if ids is None else ids, seed=0, epoch=epoch, layout=layout)
    return {k: torch.as_tensor(v) for k, v in views.items()}


def _model(seed=0, **section) -> Wav2Vec2:
    torch.manual_seed(seed)
    encoder = Wav2Vec(sample_rate=16000, max_samples=16000, dim=32, depth=1, heads=2)
    model = Wav2Vec2(encoder, Wav2Vec2Section(crop=CROP, codebook_entries=8, final_dim=16, **section))
    model.quantizer.noise = False  # the formula and the two-worker check compare deterministic choices
    return model


def _reference(model: Wav2Vec2, batch: dict) -> float:
    """L_m + alpha L_d written out frame by frame in float64 (Baevski et al. 2020, eqs. 2-4)."""
    enc, quant, cfg = model.encoder, model.quantizer, model.cfg
    z, valid = enc.frames(batch["wave"])
    x = enc.embed.proj(z).clone()
    x[batch["mask"]] = model.mask_emb
    c = model.final_proj(enc.context(x, valid))
    logits = quant.weight_proj(z).reshape(*z.shape[:2], cfg.codebook_groups, cfg.codebook_entries)
    codes = quant.codevectors.reshape(cfg.codebook_groups, cfg.codebook_entries, -1)
    q = quant.project(torch.stack([torch.cat([codes[g, logits[i, t, g].argmax()] for g in range(len(codes))])
                                   for i in range(len(z)) for t in range(z.shape[1])]).reshape(*z.shape[:2], -1))
    terms = []
    for i, t in zip(*torch.nonzero(batch["mask"] & valid, as_tuple=True)):
        others = [q[i, d] for d in batch["distractors"][i, t] if not torch.equal(q[i, d], q[i, t])]
        sims = torch.stack([F.cosine_similarity(c[i, t], y, dim=0) for y in [q[i, t], *others]]) / cfg.temperature
        terms.append(torch.logsumexp(sims, 0) - sims[0])
    probs = torch.softmax(logits[valid], dim=-1).mean(0)  # (G, V) over every valid frame
    perplexity = torch.exp(-(probs * probs.log()).sum(-1)).sum()
    gv = cfg.codebook_groups * cfg.codebook_entries
    return (torch.stack(terms).mean() + cfg.diversity_weight * (gv - perplexity) / gv).item()


def test_loss_equals_the_reference_formula_in_float64():
    model = _model().double()
    clips = _clips(6)
    clips[0, 5000:] = PAD  # a short clip
    batch = _batch(clips)
    assert batch["mask"].any(1).all() and (batch["wave"] == PAD).any()  # masks in every clip; short clips padded
    out = model(batch, step=0)
    assert out["loss"].dtype == torch.float64 and out["loss"].item() == pytest.approx(_reference(model, batch), rel=1e-10)
    assert out["gumbel_tau"].item() == 2.0 and model.tau(10_000) == 0.5


def _worker(rank, world, model, batch):
    model = copy.deepcopy(model)
    part = {k: v.chunk(world)[rank] for k, v in batch.items()}
    out = model(part, step=3)
    out["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out["loss"].item(), out["code_perplexity"].item(), grads


def test_two_workers_equal_one_process():
    """Two workers holding different numbers of masked frames: their averaged losses and gradients (DeepSpeed's
    average) equal one process's on the whole batch; the diversity term sees the global batch's codes."""
    model = _model(seed=2)
    clips = _clips(8)
    clips[4:, 6000:] = PAD  # the second worker's clips are shorter: fewer frames and masks
    batch = _batch(clips)
    results = spawn_gloo(_worker, model, batch, world=2)
    whole = copy.deepcopy(model)
    out = whole(batch, step=3)
    out["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in whole.parameters() if p.grad is not None])
    assert sum(r[0] for r in results) / 2 == pytest.approx(out["loss"].item(), rel=1e-5)
    assert [r[1] for r in results] == pytest.approx([out["code_perplexity"].item()] * 2, rel=1e-6)
    assert torch.allclose((results[0][2] + results[1][2]) / 2, grads, atol=1e-6, rtol=1e-4)


def test_the_encoder_ignores_padding():
    enc = Wav2Vec(sample_rate=16000, max_samples=16000, dim=32, depth=2, heads=2).eval()
    clip = torch.as_tensor(_clips(1))[:, :9000]
    clip[:, 8000:] = 0  # silence where the clip has samples ...
    padded = torch.cat([clip[:, :8000], torch.full((1, 4000), PAD, dtype=torch.int16)], 1)  # ... padding does not
    with torch.no_grad():
        assert torch.allclose(enc(padded), enc(clip[:, :8000]), atol=1e-5)
        assert not torch.allclose(enc(clip), enc(clip[:, :8000]), atol=1e-3)
    assert enc.spec() == {"name": "wav2vec", "sample_rate": 16000, "max_samples": 16000, "feature_dim": 32,
                          "kwargs": {"dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 4.0, "conv_dim": 16}}


@pytest.mark.long  # ~35 s: the task leaves chance level after ~250 steps
def test_a_tiny_model_learns_and_uses_more_codes():
    """400 AdamW steps on batches of 16 of 256 real spoken names (1 s crops, the paper's masks, K = 20, V = 16):
    the contrastive loss falls below chance (log of 1 + K candidates) and the codebook use (code perplexity) rises
    well above where it starts; the logs are what MLflow receives."""
    cfg = Config().override(["method.name=wav2vec2", "model.encoder=wav2vec", "model.dim=32", "model.vit_depth=1",
                             "model.heads=2", "method.wav2vec2.crop=16000"])
    section, rng = cfg.method.chosen, np.random.default_rng(0)
    torch.manual_seed(0)
    model = build_method(cfg, sample_rate=16000, max_samples=16000)
    clips = _clips(256)
    optimizer, logs = torch.optim.AdamW(model.parameters(), lr=2e-3), []
    for step in range(400):
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 20)
        take = rng.choice(len(clips), 16, replace=False)
        out = model(_batch(clips[take], epoch=step, section=section, ids=take), step)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        logs.append({k: v.item() for k, v in out.items() if k != "embeddings"})
    chance, last = math.log(1 + section.num_negatives), logs[-20:]
    assert np.mean([r["contrastive"] for r in last]) < chance - 0.05 < logs[0]["contrastive"]
    assert np.mean([r["code_perplexity"] for r in last]) > 1.3 * logs[0]["code_perplexity"]
    assert np.mean([r["masked_acc"] for r in last]) > 1.3 / (1 + section.num_negatives)
    assert out["embeddings"].shape == (16, 32) and not out["embeddings"].requires_grad
