"""Training rate and fixed costs, side by side in one run on the same cores, the demo recipe (simclr_fmnist) at
its default settings (set: train.steps, train.log_every=5, a checkpoint every 10 steps, no transfer scoring, runs
and MLflow's database in a temporary folder):

  fair          `sslscale.pretrain` (Ray Train, 2 workers x 1 thread, DeepSpeed ZeRO-1, Ray Data views, MLflow)
                against plain torch DDP (2 spawned gloo processes x 1 thread) whose webdataset + DataLoader
                (num_workers=1 per rank) builds the same views with the same code from the same shards; both with
                contiguous weights, AdamW, gradient clipping, the loss read back every train.log_every steps
  upper bounds  DDP on synthetic in-memory views (no data work), contiguous and channels_last weights: what the
                data path costs, and what ZeRO's flat parameter buffers (which rule out channels_last) cost
  MLflow        sslscale with tracking on against off (samples/s over the whole run, from the timeline; a
                checkpoint every 10 steps, when the held metrics go to MLflow)
  scaling       sslscale with 1 worker against 2 (per-worker resources alike)
  start-up      seconds from pretrain() to the end of step 1 and from the last step to the result, by phase
                (timeline.py): the first run on a new Ray instance with an empty DeepSpeed op cache (what a fresh
                clone's first run pays, the op's one-time JIT build included) against later runs on that instance

One cold sslscale run starts the Ray instance and builds the op (it feeds the start-up section only). Then each of
--repeats repeats runs, in this order, so that each pair is measured back to back:
  ours (2 workers, tracking on); DDP fair; DDP synthetic contiguous; DDP synthetic channels_last;
  sslscale with 1 worker; sslscale with 2 workers, tracking on; sslscale with tracking off.
Fair and upper-bound lines pair ours with each DDP run of its repeat, scaling the 1-worker run with the 2-worker
run after it, MLflow that run with the tracking-off run after it. The Ray instance stays up throughout: it idles
beside the DDP runs (its daemons take ~0.07 CPU when idle here). A run's samples/s for the fair and upper-bound
lines is the median of the intervals between logged steps after --warmup; for MLflow and scaling, its whole-run
rate. The start-up section sets the medians of the warm 2-worker, tracking-on runs beside the cold run. Each line:
median (min-max) of the repeats and of the per-repeat ratios (common.line).

    python benchmarks/train_throughput.py [--steps 50] [--warmup 10] [--repeats 3] [--out FILE] [overrides ...]

Run from the repo root (the fmnist corpus is prepared under ./data on first use). Not a test.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleave, line, median, show, write  # noqa: E402
from ingest import BlockViews  # noqa: E402

from pipelines import load_recipe  # noqa: E402
from sslscale.config import Config  # noqa: E402
from sslscale.data import corpus  # noqa: E402
from sslscale.methods import build_method  # noqa: E402
from sslscale.runtime import tracking
from sslscale.training.optim import param_groups  # noqa: E402

WORLD = 2
DDP = ("fair", "contiguous", "channels_last")


def run_sslscale(cfg: Config, tmp: str, *extra: str):
    from sslscale.pretraining import pretrain

    cfg = cfg.override(["transfer.enabled=false", "train.checkpoint_every=10",
                        f"tracking.uri=sqlite:///{tmp}/bench.db", f"train.storage={tmp}/runs", *extra])
    return pretrain(cfg)


def logged_rate(result, warmup: int) -> float:
    """The median samples/s of the intervals between logged steps after `warmup`."""
    return median([v for s, v in tracking.history(result.tracking_uri, result.run_id, "samples_per_s") if s > warmup])


def whole_run_rate(result, cfg: Config) -> float:
    """samples/s from the end of step 1 to the end of the last step (rank 0's timeline marks)."""
    from sslscale.training import checkpoint

    marks = checkpoint.read_state(result.checkpoint)["timeline"]
    return cfg.data.batch_size * (cfg.train.steps - 1) / (marks["last_step"] - marks["first_step"])


def _ddp_batches(cfg: Config, rank: int, variant: str, corpus_dir: str):
    """Micro-batches of uint8 views for one rank: from the shards (fair) or one synthetic batch again and again."""
    micro = cfg.data.batch_size // WORLD
    if variant == "fair":
        import webdataset as wds

        manifest = corpus.load_manifest(corpus_dir)
        ds = wds.WebDataset(corpus.shard_paths(manifest, corpus_dir, "train"), shardshuffle=False,
                            nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker, empty_check=False)
        ds = ds.repeat().batched(micro, collation_fn=BlockViews(cfg, manifest["fields"]["image"]["shape"][0]))
        yield from torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True)
    gen = torch.Generator().manual_seed(cfg.data.seed + rank)
    views = {f"view_{i}": torch.randint(0, 256, (micro, 1, 28, 28), dtype=torch.uint8, generator=gen) for i in (0, 1)}
    if variant == "channels_last":
        views = {k: v.contiguous(memory_format=torch.channels_last) for k, v in views.items()}
    while True:
        yield views


def ddp_worker(rank: int, cfg_dict: dict, variant: str, corpus_dir: str, steps: int, warmup: int, port: int,
               out: str) -> None:
    """One DDP rank; rank 0 writes the samples/s of each interval of train.log_every steps after warm-up."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cfg = Config.from_dict(cfg_dict)
        torch.manual_seed(cfg.data.seed)  # the same initial weights as the sslscale workers
        model = build_method(cfg, in_channels=1, image_size=28)
        if variant == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        model = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(param_groups(model.module, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                betas=(cfg.optim.beta1, cfg.optim.beta2))
        batches, every, rates = _ddp_batches(cfg, rank, variant, corpus_dir), cfg.train.log_every, []
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            batch = next(batches)
            loss = model({k: v.float().div_(255) for k, v in batch.items() if k.startswith("view_")})["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
            opt.step()
            if step % every == 0:
                loss = loss.detach().clone()
                tdist.all_reduce(loss)  # the logged loss, averaged over ranks, as sslscale logs it
                float(loss)
                now = time.perf_counter()
                if step > warmup:
                    rates.append(cfg.data.batch_size * every / (now - t0))
                t0 = now
        if rank == 0:
            np.savetxt(out, rates)
    finally:
        tdist.destroy_process_group()


def ddp_rates(cfg: Config, variant: str, steps: int, warmup: int, tmp: str) -> list[float]:
    out = os.path.join(tmp, f"ddp_{variant}.txt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(ddp_worker, args=(cfg.to_dict(), variant, corpus.resolve(cfg.data.corpus), steps, warmup,
                                         port, out), nprocs=WORLD, start_method="spawn")
    return np.atleast_1d(np.loadtxt(out)).tolist()


def _startup_lines(cold, warm: list) -> list[dict]:
    """One line per phase: warm runs on the Ray instance (ours) and the first run (the baseline column); no ratio,
    since neither is an alternative to sslscale."""
    return [line("start-up", key.removesuffix("_s"), [w.timings.get(key, 0) for w in warm], [cold.timings[key]], "s",
                 "later runs on the same Ray instance vs the first: new Ray instance, empty DeepSpeed op cache",
                 paired=False)
            for key in [k for k in cold.timings if k.endswith("_s")]]  # timeline order


def measure(cfg: Config, steps: int, warmup: int, repeats: int) -> list[dict]:
    from sslscale.runtime.cluster import shutdown

    cfg = cfg.override([f"train.steps={steps}", "train.log_every=5"])
    with tempfile.TemporaryDirectory(prefix="train_throughput-") as tmp:
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(tmp, "torch_extensions")  # the op's first-time build
        try:
            cold = run_sslscale(cfg, tmp)
            ours, fair, contiguous, channels_last, one, on, off = interleave(
                repeats, lambda: run_sslscale(cfg, tmp),
                *[lambda v=v: median(ddp_rates(cfg, v, steps, warmup, tmp)) for v in DDP],
                lambda: run_sslscale(cfg, tmp, "train.workers=1"), lambda: run_sslscale(cfg, tmp),
                lambda: run_sslscale(cfg, tmp, "tracking.enabled=false"))
        finally:
            shutdown()
        rate = [logged_rate(r, warmup) for r in ours]
        whole = {k: [whole_run_rate(r, cfg) for r in runs] for k, runs in (("one", one), ("on", on), ("off", off))}
    return [line("training", "fair: same views from the same shards, contiguous weights", rate, fair,
                 "samples/s", "sslscale pretrain (Ray Train + ZeRO-1 + Ray Data) vs torch DDP + DataLoader"),
            line("training", "upper bound: DDP on synthetic views, contiguous weights", rate, contiguous,
                 "samples/s", "no data work on the DDP side"),
            line("training", "upper bound: DDP on synthetic views, channels_last weights", rate, channels_last,
                 "samples/s", "what ZeRO's flat parameter buffers cost on top"),
            line("MLflow", "tracking on (ours) vs tracking.enabled=false (baseline)", whole["on"], whole["off"],
                 "samples/s", "whole run (end of step 1 to the last step), a checkpoint and an MLflow send every "
                 "10 steps"),
            line("scaling", "2 workers (ours) vs 1 worker (baseline), 1 thread each, 2 cores", whole["on"],
                 whole["one"], "samples/s", "ideal ratio 2.0 where data work and Ray need no core of their own"),
            *_startup_lines(cold, ours + on)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/out/train_throughput.json")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.widths=16,32,64")
    args = p.parse_args()
    lines = measure(load_recipe("simclr_fmnist").override(args.overrides), args.steps, args.warmup, args.repeats)
    show(lines)
    write(args.out, lines, repeats=args.repeats, steps=args.steps, warmup=args.warmup)


if __name__ == "__main__":
    main()
