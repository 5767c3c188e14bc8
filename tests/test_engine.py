"""The DeepSpeed engine on its own (no Ray): steps, the bf16 path, checkpoint round trip and integrity, schedules."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from sslscale.config import Config
from sslscale.data.position import Position
from sslscale.errors import SslscaleError
from sslscale.methods import build_method
from sslscale.schedules import cosine_weight_decay, warmup_cosine
from sslscale.training import checkpoint
from sslscale.training.engine import Engine
from sslscale.training.health import health_metrics

from distributed import spawn_gloo


def _cfg(*extra):
    cfg = Config().override(["data.batch_size=16", "train.workers=1", "model.widths=4,8", "model.depths=1,1",
                             "train.steps=4", "optim.warmup_steps=2", *extra])
    return cfg.set_for_methods(proj_hidden=16, proj_dim=8)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=g) for k in ("view_0", "view_1")}


def _engine(*extra):
    torch.manual_seed(0)
    cfg = _cfg(*extra)
    return Engine(build_method(cfg, in_channels=1, image_size=8), cfg)


@pytest.fixture(scope="module")
def fp32_engine():
    return _engine()


def test_fp32_steps_update_weights_and_follow_the_schedule(fp32_engine):
    e = fp32_engine
    before = [p.detach().clone() for p in e.method.parameters()]
    logs = [e.train_step([_batch(i)]) for i in range(2)]
    assert all(torch.isfinite(torch.tensor(l["loss"])) for l in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, e.method.parameters()))
    assert e.lr() == pytest.approx(warmup_cosine(3, total=4, warmup=2, peak=e.cfg.optim.lr, floor_ratio=0.01))
    assert e.precision == "fp32" and logs[0]["embeddings"].shape == (16, 8)


def test_bf16_path_runs_on_cpu():
    e = _engine("engine.precision=bf16", "engine.zero_stage=2")
    before = [p.detach().float().clone() for p in e.method.parameters()]
    losses = [e.train_step([_batch(i)])["loss"] for i in range(2)]
    assert e.precision == "bf16" and all(map(lambda v: torch.isfinite(torch.tensor(v)), losses))
    assert any(not torch.equal(a, b.float()) for a, b in zip(before, e.method.parameters()))


def test_checkpoint_round_trip_and_tamper_detection(fp32_engine, tmp_path):
    e = fp32_engine
    e.train_step([_batch(5)])
    folder = str(tmp_path / "ckpt")
    os.makedirs(folder)
    position = Position(10)
    position.add(0, np.array([3, 1]))
    e.save(folder, rank=0, position=position, state={"step": 3, "world_size": 1})
    saved = {k: v.clone() for k, v in e.method.state_dict().items()}
    lr = e.lr()
    e.train_step([_batch(6)])  # move away from the checkpoint
    assert checkpoint.latest(str(tmp_path)) == folder
    assert e.load(folder)["step"] == 3
    assert all(torch.equal(saved[k], v) for k, v in e.method.state_dict().items())
    assert e.lr() == pytest.approx(lr) and checkpoint.read_positions(folder, 10).ranges(0).tolist() == [[1, 2], [3, 4]]
    with open(os.path.join(folder, "ds", "mp_rank_00_model_states.pt"), "ab") as f:
        f.write(b"tampered")
    with pytest.raises(SslscaleError, match="does not match its checksum"):
        e.load(folder)
    assert checkpoint.latest(str(tmp_path)) is None


def test_incomplete_checkpoint_is_skipped(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps({"step": 9, "world_size": 2}))
    checkpoint.write_rank_files(str(folder), 0, None, None)  # rank 1's files never arrived
    assert checkpoint.latest(str(tmp_path)) is None


def test_warmup_cosine_is_pure_and_shaped():
    lrs = [warmup_cosine(s, total=100, warmup=10, peak=1.0, floor_ratio=0.1) for s in range(1, 101)]
    assert lrs[9] == 1.0 and lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_health_metrics_see_collapse():
    healthy = health_metrics(torch.randn(256, 16))
    collapsed = health_metrics(torch.ones(256, 16) + 1e-6 * torch.randn(256, 16))
    assert healthy["health/rankme"] > 12 and collapsed["health/rankme"] < 2
    assert healthy["health/std"] == pytest.approx(16 ** -0.5, rel=0.1) and collapsed["health/std"] < 1e-3


def _weights(e) -> list[torch.Tensor]:
    with e.gathered(e.method):  # whole values also under ZeRO-3
        return [p.detach().clone() for p in e.method.parameters()]


def _optimizer_state(e) -> list[torch.Tensor]:
    return [t.clone() for s in e.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_nonfinite_loss_skips_the_step_and_keeps_weights_and_optimizer_state(stage):
    e = _engine(f"engine.zero_stage={stage}", "engine.zero3_persist=0")
    e.train_step([_batch(0)])  # a good step first, so the optimizer has state to protect
    weights, state = _weights(e), _optimizer_state(e)
    stats = [b.clone() for b in e.method.buffers()]
    logs = e.train_step([_batch(1)], inject_nan=True)
    assert logs["skipped"] == 1.0 and not torch.isfinite(torch.tensor(logs["loss"]))
    assert all(torch.equal(a, b) for a, b in zip(weights, _weights(e), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(stats, e.method.buffers()))  # BatchNorm statistics too
    assert len(state) > 0 and all(torch.equal(a, b) for a, b in zip(state, _optimizer_state(e)))
    assert e.lr() == pytest.approx(warmup_cosine(3, total=4, warmup=2, peak=e.cfg.optim.lr, floor_ratio=0.01))
    after = e.train_step([_batch(2)])  # training goes on from the untouched weights
    assert after["skipped"] == 0.0 and any(not torch.equal(a, b) for a, b in zip(weights, _weights(e)))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_weight_decay_schedule_and_betas_reach_the_step_deepspeed_takes(stage):
    """Two engines from the same weights on the same batches, one with weight decay 0 throughout and one rising on
    a cosine from 0 to 8 over 4 steps: step 1 (decay 0 in both) gives equal weights, step 2 (decay 1.17) shrinks
    the second's matrices by about lr * 1.17 * w."""
    keys = [f"engine.zero_stage={stage}", "engine.zero3_persist=0", "optim.weight_decay=0", "optim.beta2=0.95",
            "optim.warmup_steps=0"]
    plain, scheduled = _engine(*keys), _engine(*keys, "optim.weight_decay_end=8")
    assert scheduled.optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    logs = [(plain.train_step([_batch(i)]), scheduled.train_step([_batch(i)])) for i in range(2)][1][1]
    wd = cosine_weight_decay(1, 4, 0.0, 8.0)
    assert logs["weight_decay"] == pytest.approx(wd) == pytest.approx(8 * (1 - math.cos(math.pi / 4)) / 2)
    decayed = [g for g in scheduled.optimizer.param_groups if g["decay"]]
    assert all(g["weight_decay"] == pytest.approx(logs["weight_decay"]) for g in decayed)
    assert all(g["weight_decay"] == 0 for g in scheduled.optimizer.param_groups if not g["decay"])
    matrices = [(a, b) for a, b in zip(_weights(plain), _weights(scheduled)) if a.ndim > 1]
    assert all(b.norm() < a.norm() for a, b in matrices)
    lr = warmup_cosine(2, total=4, warmup=0, peak=plain.cfg.optim.lr, floor_ratio=0.01)
    a, b = matrices[0]  # both took the same Adam step from the same weights; only the decay differs
    assert (a.norm() - b.norm()).item() == pytest.approx(lr * wd * a.norm().item(), rel=0.2)


class _Marker:
    """Unpickling this creates a file: proof that code in a checkpoint ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_pickled_code_is_refused_even_with_a_matching_manifest(fp32_engine, tmp_path):
    e = fp32_engine
    folder = str(tmp_path / "ckpt")
    os.makedirs(folder)
    e.save(folder, rank=0, position=None, state={"step": 1, "world_size": 1})
    states = os.path.join(folder, "ds", "mp_rank_00_model_states.pt")
    saved = torch.load(states, weights_only=True)
    torch.save({**saved, "extra": _Marker(str(tmp_path / "pwned"))}, states)
    checkpoint.write_rank_files(folder, 0, None, checkpoint.read_state(folder))  # the manifest now agrees
    with pytest.raises(SslscaleError, match="holds objects other than tensors"):
        e.load(folder)
    assert not (tmp_path / "pwned").exists()


def test_crash_while_saving_leaves_the_previous_checkpoint_loadable(fp32_engine, tmp_path, record):
    e = fp32_engine
    good = str(tmp_path / "checkpoint_0000003")
    os.makedirs(good)
    e.save(good, rank=0, position=Position(10), state={"step": 3, "world_size": 1})
    weights = {k: v.clone() for k, v in e.method.state_dict().items()}
    e.train_step([_batch(7)])
    # the next save dies half-way: its DeepSpeed files are written, one of them cut short, no manifest yet
    torn = tmp_path / "checkpoint_0000006"
    shutil.copytree(os.path.join(good, "ds"), torn / "ds")
    checkpoint.write_json(str(torn / "state.json"), {"step": 6, "world_size": 1})
    optim = next((torn / "ds").glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[:100])
    assert checkpoint.latest(str(tmp_path)) == good
    assert e.load(good)["step"] == 3
    assert all(torch.equal(weights[k], v) for k, v in e.method.state_dict().items())
    record(fault="crash while saving", injected="a checkpoint folder torn mid-save (file cut short, no manifest)",
           outcome="latest() skips it (checksums), the previous checkpoint loads with weights_only=True",
           lost=0, repeated=0, recover_s="-")


def _logged_and_local(rank, world):
    """A quiet step, then a logged one on this rank's own batch: the loss the engine logs, and this rank's loss
    alone on the same weights."""
    from sslscale.training.engine import Engine

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    cfg = _cfg()
    torch.manual_seed(0)
    e = Engine(build_method(cfg, in_channels=1, image_size=8), cfg)
    quiet = e.train_step([_batch(20 + rank)], log=False)
    batch = _batch(10 + rank)
    e.ds.train()
    buffers = [b.clone() for b in e.method.buffers()]
    local = float(e.ds(e.to_device(batch))["loss"])  # the forward alone moves BatchNorm statistics: put them back
    for b, saved in zip(e.method.buffers(), buffers):
        b.data.copy_(saved)
    logged = e.train_step([batch])  # the same forward, in a logged step: every rank's scalars averaged
    return {"quiet": sorted(quiet), "logged": logged["loss"], "local": local, "lr": logged["lr"]}


@pytest.mark.slow
def test_a_logged_loss_is_the_mean_over_ranks_and_a_quiet_step_reads_nothing_back():
    a, b = spawn_gloo(_logged_and_local, world=2)
    assert a["quiet"] == ["embeddings", "lr", "skipped"]  # no scalars read back but the guard's flag (lr: a float)
    assert a["local"] != pytest.approx(b["local"], rel=1e-3)
    assert a["logged"] == pytest.approx((a["local"] + b["local"]) / 2, rel=1e-5) == b["logged"]
    assert a["lr"] == b["lr"]


def test_to_device_moves_what_the_method_declares_and_refuses_the_rest(fp32_engine):
    e = fp32_engine
    assert e.inputs == {"view_0": "pixels", "view_1": "pixels"}  # SimCLR's two views
    ids = np.arange(16)
    out = e.to_device({**_batch(), "id": ids, "epoch": ids})
    assert out["view_0"].dtype == torch.float32 and float(out["view_0"].max()) <= 1.0
    assert out["id"] is ids  # the stream's bookkeeping stays as it came
    with pytest.raises(SslscaleError, match=r"^SimCLR got batch field 'keep', which it does not declare \(it takes "
                                            r"view_0, view_1\): add it to its `inputs`$"):
        e.to_device({**_batch(), "keep": torch.zeros(16, 4, dtype=torch.long)})


def test_every_method_declares_exactly_what_its_stream_makes():
    """Method.inputs and the Ray Data stream's rows (stream.make_views, on one blank image or passage) cannot drift
    apart."""
    from sslscale.data.modalities import KINDS
    from sslscale.data.stream import Part, _one_row
    from sslscale.methods import NAMES, method_class

    fields = {"image": {"kind": "image", "encoding": "png", "shape": [8, 8, 1], "dtype": "uint8"},
              "text": {"kind": "text", "encoding": "ids", "dtype": "uint16", "max_length": 8, "vocab_size": 50},
              "audio": {"kind": "audio", "encoding": "pcm16", "sample_rate": 16000, "max_samples": 4000}}
    for name, cls in ((n, method_class(n)) for n in NAMES):
        cfg = Config().override([f"method.name={name}", "data.n_local=2", "data.local_size=4",
                                 *(["model.encoder=vit", "model.patch_size=2"] if name == "mae" else [])])
        sizes = {kind: 8 for kind in fields}
        made = _one_row([Part(KINDS[kind](kind, fields[kind]), layout, {})
                         for kind, layout in cls.views(cfg, sizes).items()])
        assert list(made) == list(cls.inputs(cfg, sizes)), name
        assert all(made[k].dtype == np.uint8 if kind == "pixels" else  # ids: integers (int16 PCM) or flags (masks)
                   np.issubdtype(made[k].dtype, np.integer) or made[k].dtype == np.bool_
                   for k, kind in cls.inputs(cfg, sizes).items()), name
