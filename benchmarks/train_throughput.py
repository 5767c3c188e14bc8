"""Training rate, side by side in one run on the same cores: the demo recipe (simclr_fmnist) through
sslscale.pretrain (Ray Train + DeepSpeed ZeRO-1, 2 workers, Fashion-MNIST views from Ray Data) against plain
torch DDP (2 spawned gloo processes, 1 thread each) training the same model on synthetic in-memory views.

    python benchmarks/train_throughput.py [--steps 60] [--warmup 10] [overrides ...]

Run it from the repo root (the fmnist corpus is prepared under ./data on first use). Prints samples/s for each
and the ratio sslscale/ddp. The DDP side has no data loading: it is the pure training upper bound.
Not a test: numbers depend on the machine."""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from pipelines import load_recipe
from sslscale.config import Config
from sslscale.methods import build_method

WORLD = 2


def sslscale_rate(cfg: Config, steps: int, warmup: int, tmp: str) -> float:
    from sslscale import tracking
    from sslscale.pretraining import pretrain
    from sslscale.runtime import shutdown

    cfg = cfg.override([f"train.steps={steps}", "transfer.enabled=false", f"train.checkpoint_every={steps}",
                        f"tracking.uri=sqlite:///{tmp}/bench.db", f"train.storage={tmp}/runs"])
    try:
        result = pretrain(cfg)
    finally:
        shutdown()
    rates = [v for s, v in tracking.history(result.tracking_uri, result.run_id, "samples_per_s") if s > warmup]
    if not rates:
        raise SystemExit(f"no samples_per_s logged after step {warmup}: raise --steps above --warmup")
    return statistics.median(rates)


def ddp_worker(rank: int, cfg_dict: dict, steps: int, warmup: int, port: int, out: str) -> None:
    """One DDP rank: the recipe's model on pre-made uint8 views; rank 0 writes samples/s to `out`."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cfg = Config.from_dict(cfg_dict)
        torch.manual_seed(cfg.data.seed)  # same initial weights as the sslscale workers
        model = build_method(cfg, in_channels=1, image_size=28).to(memory_format=torch.channels_last)
        model = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        micro = cfg.data.batch_size // WORLD
        gen = torch.Generator().manual_seed(cfg.data.seed + rank)
        views = [torch.randint(0, 256, (micro, 1, 28, 28), dtype=torch.uint8, generator=gen) for _ in range(2)]
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]

        def step() -> None:
            batch = {f"view_{i}": v.float().div_(255) for i, v in enumerate(views)}
            loss = model(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
            opt.step()

        for _ in range(warmup):
            step()
        tdist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        tdist.barrier()
        seconds = time.perf_counter() - t0
        if rank == 0:
            with open(out, "w") as f:
                f.write(str(micro * WORLD * steps / seconds))
    finally:
        tdist.destroy_process_group()


def ddp_rate(cfg: Config, steps: int, warmup: int, tmp: str) -> float:
    out = os.path.join(tmp, "ddp_rate.txt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(ddp_worker, args=(cfg.to_dict(), steps, warmup, port, out), nprocs=WORLD,
                       start_method="spawn")
    with open(out) as f:
        return float(f.read())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.widths=16,32,64")
    args = p.parse_args()
    cfg = load_recipe("simclr_fmnist").override(args.overrides)
    with tempfile.TemporaryDirectory(prefix="train_throughput-") as tmp:
        ours = sslscale_rate(cfg, args.steps, args.warmup, tmp)
        ddp = ddp_rate(cfg, args.steps, args.warmup, tmp)
    print(f"sslscale pretrain (Ray Train + DeepSpeed ZeRO-{cfg.engine.zero_stage}, {WORLD} workers): {ours:8.0f} samples/s")
    print(f"plain torch DDP (gloo, {WORLD} procs x 1 thread, fp32):            {ddp:8.0f} samples/s")
    print(f"ratio sslscale/ddp: {ours / ddp:.2f}")
    print(f"sslscale: Ray Data views + DeepSpeed ZeRO-{cfg.engine.zero_stage} + Ray Train, contiguous weights; "
          "DDP: synthetic in-memory views, channels_last, no data loading (pure training upper bound)")


if __name__ == "__main__":
    main()
