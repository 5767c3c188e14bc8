"""BYOL and MoCo v3: losses against reference formulas written here (float64 loops), batch order, the 2-worker
property of MoCo's key gather, the EMA teacher under real DeepSpeed ZeRO-1/2 on 2 processes (update rule, skipped
steps, checkpoint round trip), and a forward+backward of each Method."""
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.distributed as tdist
from torch import nn

from distributed import spawn_gloo
from sslscale.checks import validate
from sslscale.config import Config
from sslscale.errors import SslscaleError
from sslscale.methods import build_method
from sslscale.methods.byol import byol_loss
from sslscale.methods.moco import moco_v3_loss
from sslscale.training import checkpoint
from sslscale.training.export import load_encoder
from sslscale.training.optim import param_groups


def reference_byol(p, z):
    """Grill et al. 2020, eq. (2): ||p/|p| - z/|z| ||^2 per image, averaged."""
    p, z = p.double().numpy(), z.double().numpy()
    terms = [((p[i] / np.linalg.norm(p[i]) - z[i] / np.linalg.norm(z[i])) ** 2).sum() for i in range(len(p))]
    return sum(terms) / len(terms)


def reference_moco(q, k, t):
    """Chen et al. 2021, Algorithm 1: 2T x cross-entropy of q_i . k_i / T against q_i . k_j / T over all keys j."""
    q, k = q.double().numpy(), k.double().numpy()
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(q)):
        scores = [float(q[i] @ k[j]) / t for j in range(len(k))]
        total += -scores[i] + math.log(sum(math.exp(s) for s in scores))
    return 2 * t * total / len(q)


def _pair(seed, n=10, d=5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g)
    return q, 0.7 * q + 0.5 * torch.randn(n, d, generator=g)  # correlated, as training produces


def test_byol_matches_reference_formula_and_targets_get_no_gradient():
    p, z = _pair(0)
    p.requires_grad_(), z.requires_grad_()
    loss = byol_loss(p, z)
    assert loss.item() == pytest.approx(reference_byol(p.detach(), z.detach()), rel=1e-5)
    loss.backward()
    assert z.grad is None and torch.isfinite(p.grad).all()
    z = z.detach()
    assert float(byol_loss(z, 3 * z)) == pytest.approx(0.0, abs=1e-6)  # scale-invariant: aligned pairs cost 0
    assert float(byol_loss(z, -z)) == pytest.approx(4.0)


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_moco_matches_reference_formula(temperature):
    q, k = _pair(1)
    loss, acc = moco_v3_loss(q, k, temperature)
    assert float(loss) == pytest.approx(reference_moco(q, k, temperature), rel=1e-5)
    assert 0.0 <= float(acc) <= 1.0


@pytest.mark.parametrize("loss_fn", [byol_loss, lambda q, k: moco_v3_loss(q, k, 0.2)[0]])
def test_invariant_to_batch_order(loss_fn):
    q, k = _pair(2, n=16, d=6)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    assert float(loss_fn(q[perm], k[perm])) == pytest.approx(float(loss_fn(q, k)), rel=1e-5)


def _moco_worker(rank, world, q, k):
    n = len(q) // world
    a = q[rank * n:(rank + 1) * n].clone().requires_grad_()
    b = k[rank * n:(rank + 1) * n].clone().requires_grad_()
    loss, _ = moco_v3_loss(a, b, 0.2)
    loss.backward()
    return float(loss), a.grad.clone(), b.grad is None


def test_moco_two_workers_equal_single_process_loss_and_query_gradients():
    q, k = _pair(6, n=12, d=6)
    world = 2
    results = spawn_gloo(_moco_worker, q, k, world=world)
    a = q.clone().requires_grad_()
    full = moco_v3_loss(a, k, 0.2)[0]
    full.backward()
    # Each worker's loss is a mean over its own queries against all keys: the workers' mean is the global loss...
    assert sum(r[0] for r in results) / world == pytest.approx(full.item(), rel=1e-5)
    # ...and each worker's queries get world x their share of the global gradient, which DeepSpeed's average undoes.
    assert torch.allclose(torch.cat([r[1] for r in results]) / world, a.grad, rtol=1e-4, atol=1e-7)
    assert all(r[2] for r in results)  # keys carry no gradient


# EMA teacher under DeepSpeed ZeRO on 2 processes: BASE and STEPS make the momentum move a lot in K steps.
BASE, STEPS, K = 0.5, 4, 3


def _cfg(*extra):
    return Config().override(["method.name=byol", "data.batch_size=16", "train.workers=2", "model.widths=4,8",
                              "model.depths=1,1", "method.byol.proj_hidden=16", "method.byol.proj_dim=8",
                              "optim.warmup_steps=0", f"train.steps={STEPS}", f"method.byol.momentum={BASE}", *extra])


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=g) for k in ("view_0", "view_1")}


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _ema_worker(rank, world, stage, folder):
    from sslscale.training.engine import Engine  # deepspeed only in the spawned processes

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    cfg = _cfg(f"engine.zero_stage={stage}", "engine.zero3_persist=0")  # ZeRO-3: even tiny tensors partitioned
    torch.manual_seed(0)
    engine = Engine(build_method(cfg, in_channels=1, image_size=8), cfg)
    m = engine.method
    student = nn.Sequential(m.encoder, m.head)  # what the teacher copies

    def full(e, module):  # whole weights, also where ZeRO-3 partitions them
        with e.gathered(module):
            return _snapshot(module.parameters())

    expected = [p.double() for p in full(engine, student)]
    for t in range(1, K + 1):
        assert engine.train_step([_batch(100 * t + rank)])["skipped"] == 0.0
        tau = 1 - (1 - BASE) * (math.cos(math.pi * t / STEPS) + 1) / 2
        expected = [tau * e + (1 - tau) * s.double() for e, s in zip(expected, full(engine, student))]
    out = {"teacher": full(engine, m.teacher), "expected": [e.float() for e in expected],
           "student": full(engine, student),
           "buffers": all(torch.equal(a, b) for a, b in zip(m.teacher.buffers(), student.buffers()))}
    plain = build_method(cfg, in_channels=1, image_size=8)  # the expected teacher, unwrapped: same outputs
    for p, v in zip(plain.teacher.parameters(), out["expected"]):
        p.data.copy_(v)
    x = engine.to_device(_batch(9))["view_0"]
    out["targets"] = torch.allclose(m.targets(x), plain.targets(x), atol=1e-5)  # the forward sees the update
    out["skipped"] = engine.train_step([_batch(7)], inject_nan=rank == 1)["skipped"]  # one rank's NaN skips all
    out["after_skip"] = full(engine, m.teacher)
    engine.save(os.path.join(folder, f"rank{rank}"), rank=rank, position=None,
                state={"step": K + 1, "world_size": world} if rank == 0 else None)
    encoder = full(engine, m.encoder)  # the export holds whole weights, also under ZeRO-3
    if rank == 0:
        exported = load_encoder(os.path.join(folder, "rank0", checkpoint.ENCODER)).parameters()
        out["exported"] = all(torch.equal(a, b) for a, b in zip(encoder, exported, strict=True))
    tdist.barrier()
    if rank == 0:  # what Ray Train does with the ranks' folders
        for r in range(world):
            shutil.copytree(os.path.join(folder, f"rank{r}"), os.path.join(folder, "merged"), dirs_exist_ok=True)
    tdist.barrier()
    torch.manual_seed(1)
    fresh = Engine(build_method(cfg, in_channels=1, image_size=8), cfg)
    out["fresh"] = full(fresh, fresh.method.teacher)
    fresh.load(os.path.join(folder, "merged"))
    out["loaded"], out["global_step"] = full(fresh, fresh.method.teacher), fresh.ds.global_steps
    return out


# ZeRO-3 (partitioned weights, the hardest case) in make test, ZeRO-1 and 2 (~10 s each) in make test-long
@pytest.mark.parametrize("stage", [pytest.param(1, marks=pytest.mark.long), pytest.param(2, marks=pytest.mark.long), 3])
def test_ema_teacher_under_zero_follows_the_update_rule_and_is_checkpointed(stage, tmp_path):
    results = spawn_gloo(_ema_worker, stage, str(tmp_path), world=2)
    for r in results:
        assert all(torch.allclose(t, e, atol=1e-6) for t, e in zip(r["teacher"], r["expected"]))
        assert any(not torch.allclose(t, s, atol=1e-4) for t, s in zip(r["teacher"], r["student"]))  # it lags
        assert r["buffers"] and r["targets"] and r["skipped"] == 1.0
        assert all(torch.equal(a, b) for a, b in zip(r["teacher"], r["after_skip"]))  # a skipped step: untouched
        assert any(not torch.equal(a, b) for a, b in zip(r["teacher"], r["fresh"]))
        assert all(torch.equal(a, b) for a, b in zip(r["teacher"], r["loaded"]))
        assert r["global_step"] == K + 1  # the momentum schedule resumes where it was (skipped step included)
    assert results[0]["exported"]
    assert all(torch.equal(a, b) for a, b in zip(results[0]["teacher"], results[1]["teacher"]))  # same on both ranks


@pytest.mark.parametrize("name, logs", [("byol", set()), ("moco_v3", {"contrastive_acc"})])
def test_method_runs_forward_and_backward_on_a_tiny_resnet(name, logs):
    torch.manual_seed(0)
    cfg = Config().override([f"method.name={name}", f"method.{name}.proj_hidden=32", f"method.{name}.proj_dim=16",
                             "model.widths=8,16", "model.depths=1,1"])
    method = build_method(cfg, in_channels=1, image_size=8)
    assert method.total_steps == cfg.train.steps
    out = method({"view_0": torch.rand(8, 1, 8, 8), "view_1": torch.rand(8, 1, 8, 8)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and logs <= set(out)
    assert out["embeddings"].shape == (8, 16) and not out["embeddings"].requires_grad
    assert all(not out[k].requires_grad and out[k].dim() == 0 for k in logs)
    for part in (method.encoder, method.head, method.predictor):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in part.parameters())
    teacher = list(method.teacher.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    trained = {id(p) for g in param_groups(method, 0.0) for p in g["params"]}
    assert trained.isdisjoint(map(id, teacher)) and len(trained) == sum(p.requires_grad for p in method.parameters())


@pytest.mark.parametrize("name", ["byol", "moco_v3", "dino"])
def test_per_view_strengths_reach_the_views_the_stream_makes(name):
    """BYOL's asymmetric views from the method's section: view 0 blurred always and never solarised, view 1 blurred
    at 0.1 and solarised at 0.2; unset, both views take data.blur and data.solarize (no per-view overrides)."""
    from sslscale.methods import view_layouts

    assert view_layouts(Config().override([f"method.name={name}"]), {"image": 8})["image"].per_view == ()
    cfg = Config().override([f"method.name={name}", f"method.{name}.view_blur=1.0,0.1",
                             f"method.{name}.view_solarize=0,0.2"])
    assert view_layouts(validate(cfg), {"image": 8})["image"].per_view == ({"blur": 1.0, "solarize": 0.0},
                                                                           {"blur": 0.1, "solarize": 0.2})
    for bad in ("1.5,0", "0.1", "a,b", "0.1,0.2,0.3"):
        with pytest.raises(SslscaleError, match=f"method.{name}.view_blur: must be empty, or two probabilities"):
            validate(cfg.override([f"method.{name}.view_blur={bad}"]))


@pytest.mark.parametrize("name", ["byol", "moco_v3", "dino"])
@pytest.mark.parametrize("items, key", [(["momentum=1.5"], "momentum"), (["momentum=-0.1"], "momentum"),
                                        (["momentum=0.99", "momentum_final=0.9"], "momentum_final"),
                                        (["momentum_final=1.01"], "momentum_final")])
def test_validate_rejects_bad_momentum(name, items, key):
    with pytest.raises(SslscaleError, match=f"method.{name}.{key}: must be in"):
        validate(Config().override([f"method.name={name}", *(f"method.{name}.{i}" for i in items)]))
    validate(Config().override(["method.name=moco_v3", "method.moco_v3.momentum=0.99",
                                "method.moco_v3.momentum_final=0.99"]))


def test_bf16_zero3_with_a_teacher_is_refused_in_one_line():
    from sslscale.training.engine import Engine

    cfg = _cfg("engine.zero_stage=3", "engine.precision=bf16", "train.workers=1")
    with pytest.raises(SslscaleError, match="ZeRO-3 would partition in bf16: use engine.zero_stage=1 or 2") as e:
        Engine(build_method(cfg, in_channels=1, image_size=8), cfg)
    assert "\n" not in str(e.value)


def test_teacher_stays_fp32_under_bf16_and_moves_by_the_ema_step():
    """bf16 cannot hold a (1 - 0.99) x (student - teacher) step; the engine keeps the teacher in fp32."""
    from sslscale.training.engine import Engine

    cfg = _cfg("engine.precision=bf16", "train.workers=1")
    torch.manual_seed(0)
    engine = Engine(build_method(cfg, in_channels=1, image_size=8), cfg)
    m = engine.method
    before = _snapshot(m.teacher.parameters())
    assert engine.train_step([_batch(1)])["skipped"] == 0.0
    tau = 1 - (1 - BASE) * (math.cos(math.pi / STEPS) + 1) / 2
    student = _snapshot(nn.Sequential(m.encoder, m.head).parameters())
    assert all(p.dtype == torch.float32 for p in m.teacher.parameters())
    assert all(s.dtype == torch.bfloat16 for s in student)
    for t, b, s in zip(m.teacher.parameters(), before, student):
        assert torch.allclose(t, tau * b + (1 - tau) * s.float(), atol=1e-6)
