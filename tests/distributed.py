"""Test helper: run a function on N spawned processes joined in a gloo process group, collect what each returns.

    results = spawn_gloo(fn, *args, world=2)   # fn(rank, world, *args) -> picklable; results[rank]

`fn` must be a module-level function (spawned processes import it by name).
"""
from __future__ import annotations

import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out[rank] = fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn_gloo(fn, *args, world: int = 2) -> list:
    """fn(rank, world, *args) on `world` gloo processes; returns their results in rank order."""
    with mp.get_context("spawn").Manager() as manager:
        out = manager.dict()
        mp.start_processes(_entry, args=(world, _free_port(), fn, args, out), nprocs=world, start_method="spawn")
        return [out[r] for r in range(world)]
