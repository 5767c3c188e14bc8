"""DINO: the loss against a float64 reference written here, batch order, gradients (student only), the centre and
loss on 2 gloo workers against one process, multi-crop views from the stream's layout, and the schedules."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed import spawn_gloo
from sslscale.config import Config
from sslscale.data.views import ViewSpec, batch_views
from sslscale.methods import build_method, view_layouts
from sslscale.methods.dino import dino_loss


def reference_dino(student, teacher, center, ts, tt):
    """Caron et al. 2021, Algorithm 1 with multi-crop: H(t_a, s_b) = -sum_k P_t(a)_k log P_s(b)_k over every
    teacher (global) view a and student view b != a, averaged over pairs and images."""
    def softmax(v):
        e = [math.exp(x - max(v)) for x in v]
        return [x / sum(e) for x in e]

    c = center.double().numpy().ravel()
    total, pairs = 0.0, 0
    for a, t in enumerate(teacher):
        for b, s in enumerate(student):
            if a == b:
                continue
            for i in range(len(t)):
                p_t = softmax([(float(t[i, k]) - c[k]) / tt for k in range(t.shape[1])])
                p_s = softmax([float(s[i, k]) / ts for k in range(s.shape[1])])
                total += -sum(p * math.log(q) for p, q in zip(p_t, p_s)) / len(t)
            pairs += 1
    return total / pairs


def _outputs(seed, n=6, k=7, views=4):
    g = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(n, k, generator=g) for _ in range(2)]
    student = [t + 0.5 * torch.randn(n, k, generator=g) for t in teacher]
    student += [torch.randn(n, k, generator=g) for _ in range(views - 2)]
    return student, teacher, 0.3 * torch.randn(1, k, generator=g)


@pytest.mark.parametrize("tt", [0.04, 0.07])
def test_loss_matches_reference_and_only_the_student_gets_gradients(tt):
    student, teacher, center = _outputs(0)
    student = [s.requires_grad_() for s in student]
    teacher = [t.requires_grad_() for t in teacher]
    loss = dino_loss(student, teacher, center, 0.1, tt)
    expected = reference_dino([s.detach() for s in student], [t.detach() for t in teacher], center, 0.1, tt)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(t.grad is None for t in teacher) and all(torch.isfinite(s.grad).all() for s in student)


def test_loss_is_invariant_to_batch_order():
    student, teacher, center = _outputs(1)
    perm = torch.randperm(len(teacher[0]), generator=torch.Generator().manual_seed(0))
    a = dino_loss(student, teacher, center, 0.1, 0.04)
    b = dino_loss([s[perm] for s in student], [t[perm] for t in teacher], center, 0.1, 0.04)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def _cfg(encoder="vit", n_local=2):
    cfg = Config().override(["method.name=dino", f"model.encoder={encoder}", "model.patch_size=2", "model.dim=16",
                             "model.vit_depth=1", "model.heads=2", "model.widths=8,16", "model.depths=1,1",
                             "method.dino.proj_hidden=32", "method.dino.proj_dim=8", "method.dino.out_dim=12",
                             f"data.n_local={n_local}", "data.local_size=4", "method.dino.teacher_temp_start=0.04",
                             "method.dino.teacher_temp=0.07", "method.dino.teacher_temp_warmup=10", "train.steps=20"])
    return cfg


def _batch(n, seed, n_local=2):
    g = torch.Generator().manual_seed(seed)
    batch = {f"view_{v}": torch.rand(n, 1, 8, 8, generator=g) for v in range(2)}
    batch.update({f"local_{j}": torch.rand(n, 1, 4, 4, generator=g) for j in range(n_local)})
    return batch


def _two_worker_dino(rank, world, batch):
    torch.manual_seed(0)  # the same initial weights on both ranks, as DeepSpeed broadcasts them
    method = build_method(_cfg(), in_channels=1, image_size=8)
    n = len(batch["view_0"]) // world
    out = method({k: v[rank * n : (rank + 1) * n] for k, v in batch.items()})
    return out["loss"].item(), method.center.clone()


def test_two_workers_centre_on_the_global_batch_and_average_to_the_single_process_loss():
    batch = _batch(8, seed=3)
    results = spawn_gloo(_two_worker_dino, batch, world=2)
    torch.manual_seed(0)
    single = build_method(_cfg(), in_channels=1, image_size=8)  # ViT: no BatchNorm, so per-worker = global
    out = single(batch)
    assert np.mean([r[0] for r in results]) == pytest.approx(out["loss"].item(), rel=1e-5)
    for _, center in results:  # every rank holds the centre of the whole global batch
        assert torch.allclose(center, single.center, atol=1e-6)
    assert single.center.abs().sum() > 0


@pytest.mark.parametrize("encoder", ["resnet", "vit"])
def test_dino_trains_on_multi_crop_views_from_the_stream_layout(encoder):
    cfg = _cfg(encoder)
    layout = view_layouts(cfg, {"image": 8})["image"]
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    views = batch_views(images, np.arange(4), seed=0, epoch=0, spec=ViewSpec(size=8), **vars(layout))
    assert sorted(views) == ["local_0", "local_1", "view_0", "view_1"] and views["local_0"].shape == (4, 1, 4, 4)
    torch.manual_seed(0)
    method = build_method(cfg, in_channels=1, image_size=8)
    out = method({k: torch.as_tensor(v).float() / 255 for k, v in views.items()})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["embeddings"].shape == (4, method.encoder.feature_dim)
    assert all(p.grad is None for p in method.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.encoder.parameters())


def test_teacher_temperature_warms_up_and_teacher_follows_the_student():
    torch.manual_seed(0)
    method = build_method(_cfg(), in_channels=1, image_size=8)
    assert method({**_batch(4, 0)})["teacher_temp"].item() == pytest.approx(0.04)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.teacher.parameters()]
    method.after_step(5)
    assert method(_batch(4, 1), 5)["teacher_temp"].item() == pytest.approx(0.055)  # halfway through the warmup
    assert "steps_done" not in method.state_dict()  # the step is the loop's, not a buffer
    moved = [not torch.equal(a, b) for a, b in zip(before, method.teacher.parameters())]
    assert any(moved)


def test_last_layer_stays_frozen_for_the_first_steps_under_deepspeed():
    """method.dino.freeze_last_layer=2: the prototypes (as the head uses them, row-normalised) do not move in steps 1-2
    while the rest of the student trains, and move from step 3 on (ZeRO-1, weight decay on)."""
    from sslscale.training.engine import Engine

    cfg = _cfg().override(["method.dino.freeze_last_layer=2", "optim.weight_decay=0.05", "data.batch_size=4",
                           "train.workers=1", "optim.warmup_steps=0"])
    torch.manual_seed(0)
    engine = Engine(build_method(cfg, in_channels=1, image_size=8), cfg)
    m = engine.method

    def state():
        return F.normalize(m.head.prototypes.detach(), dim=-1).clone(), m.head.mlp[0].weight.detach().clone()

    history = [state()]
    for step in range(3):
        batch = {k: (v * 255).to(torch.uint8) for k, v in _batch(4, 10 + step).items()}
        assert engine.train_step([batch])["skipped"] == 0.0
        history.append(state())
    for before, after in zip(history[:2], history[1:3]):  # steps 1 and 2: frozen prototypes, a training MLP
        assert torch.allclose(before[0], after[0], atol=1e-6) and not torch.equal(before[1], after[1])
    assert not torch.allclose(history[2][0], history[3][0], atol=1e-6)  # step 3: the prototypes train

    # a checkpoint of the older layout (no prototype group: what freeze_last_layer=0 still builds) cannot resume it
    import os
    import tempfile

    from sslscale.errors import SslscaleError

    old_cfg = cfg.override(["method.dino.freeze_last_layer=0"])
    old = Engine(build_method(old_cfg, in_channels=1, image_size=8), old_cfg)
    with tempfile.TemporaryDirectory() as folder:
        old.save(folder, rank=0, position=None, state={"step": 0, "world_size": 1})
        with pytest.raises(SslscaleError, match=r"another optimizer layout than this run .* cannot resume: start it "
                                                r"again$"):
            engine.load(folder)
        assert os.path.isdir(folder)
