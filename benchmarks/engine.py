"""The DeepSpeed engine against a plain torch optimizer step, in one process, side by side on the same core:
the demo recipe's model (simclr_fmnist) on one synthetic micro-batch, AdamW with the same parameter groups and
gradient clipping, contiguous weights on both sides (the engine's memory format), one thread. Engine lines:
sslscale.training.engine.Engine.train_step at ZeRO 0, 1 and 2 (steps not logged: only the non-finite guard's flag is
read back, as on most steps of a run).

Each variant first takes --warmup untimed steps. Then each repeat times, for ZeRO 0, 1 and 2 in turn, one window of
--steps engine steps and right after it one of --steps plain steps, so that each line pairs every engine window with
the plain window beside it.

    python benchmarks/engine.py [--steps 15] [--warmup 5] [--repeats 5] [--out FILE] [overrides ...]

Lines: steps/s, median (min-max) of the repeats, and of the per-repeat ratios (common.line). Not a test.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleave, line, show, write  # noqa: E402

from pipelines import load_recipe  # noqa: E402
from sslscale.config import Config  # noqa: E402
from sslscale.methods import build_method  # noqa: E402
from sslscale.training.optim import param_groups  # noqa: E402

ZERO = (0, 1, 2)


def _batch(cfg: Config) -> dict:
    g = torch.Generator().manual_seed(0)
    n = cfg.data.batch_size
    return {f"view_{i}": torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g) for i in (0, 1)}


def _plain_step(cfg: Config):
    torch.manual_seed(cfg.data.seed)
    model = build_method(cfg, in_channels=1, image_size=28)
    opt = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                            betas=(cfg.optim.beta1, cfg.optim.beta2))
    batch = _batch(cfg)

    def step() -> None:
        loss = model({k: v.float().div_(255) for k, v in batch.items()})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
        opt.step()

    return step


def _engine_step(cfg: Config):
    from sslscale.training.engine import Engine

    torch.manual_seed(cfg.data.seed)
    engine = Engine(build_method(cfg, in_channels=1, image_size=28), cfg)
    batch = _batch(cfg)
    return lambda: engine.train_step([batch], log=False)


def _window(step, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def measure(cfg: Config, steps: int, warmup: int, repeats: int) -> list[dict]:
    torch.set_num_threads(1)
    cfg = cfg.override(["train.workers=1", f"train.steps={warmup + steps * repeats}", "data.batch_size=128"])
    plain = _plain_step(cfg)
    engines = [_engine_step(cfg.override([f"engine.zero_stage={z}"])) for z in ZERO]
    for step in (plain, *engines):
        _window(step, warmup)
    # per repeat: ZeRO-0, plain, ZeRO-1, plain, ZeRO-2, plain
    windows = interleave(repeats, *[lambda s=s: _window(s, steps) for e in engines for s in (e, plain)])
    return [line("engine", f"DeepSpeed engine ZeRO-{z} vs plain torch AdamW step, 1 process, batch 128",
                 windows[2 * i], windows[2 * i + 1], "steps/s",
                 "contiguous weights both; engine step includes the non-finite guard") for i, z in enumerate(ZERO)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/out/engine.json")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    lines = measure(load_recipe("simclr_fmnist").override(args.overrides), args.steps, args.warmup, args.repeats)
    show(lines)
    write(args.out, lines, repeats=args.repeats, steps=args.steps)


if __name__ == "__main__":
    main()
