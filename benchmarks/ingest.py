"""Ingest rate, side by side in one run on the same cores: the Ray Data path (one task per shard reads it,
checks its sha256, decodes and makes the method's views with views.batch_views; the default config otherwise)
against webdataset + torch DataLoader doing the same work with the same view code (decode, then batch_views on
blocks of the same size), at equal CPU budget: data.cpus=N against DataLoader(num_workers=N), for N = 1 and 2.
Both consume torch batches in the main process. The plain path does not check sha256 (webdataset has no such
check): ours does more work.

Each repeat times one window of --samples samples from a fresh Ray Data stream, then one from a fresh DataLoader,
each after a warm-up batch and closed after its window (common.window), so that neither side's work runs into the
other's window; one untimed repeat comes first at each CPU budget. The Ray side's train.steps makes a stream of
twice the warm-up batch and the window. One local Ray instance stays up throughout: it idles (~0.07 CPU here)
beside the DataLoader's windows.

    python benchmarks/ingest.py [--corpus fmnist] [--samples 100000] [--repeats 3] [--cpus 1,2] [--out FILE] [overrides]

Lines: samples/s, median (min-max) of the repeats, and of the per-repeat ratios (common.line). Not a test.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import webdataset as wds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleave, line, show, window, write  # noqa: E402

from sslscale.config import Config  # noqa: E402
from sslscale.data import corpus, stream  # noqa: E402
from sslscale.data.modalities.image import decode_image  # noqa: E402
from sslscale.data.views import ViewSpec, batch_views  # noqa: E402
from sslscale.methods import view_layouts, view_parts  # noqa: E402
from sslscale.runtime.cluster import ensure_ray, shutdown  # noqa: E402


class BlockViews:
    """webdataset collation: a block of samples -> decoded images -> the method's views (picklable, for workers)."""

    def __init__(self, cfg: Config, size: int):
        self.seed, self.spec = cfg.data.seed, ViewSpec.from_config(cfg, size)
        self.layout = view_layouts(cfg, {"image": size})["image"]

    def __call__(self, samples: list[dict]) -> dict:
        ids = np.array([int(s["__key__"]) for s in samples], np.int64)
        images = np.stack([decode_image(s["image.png"]) for s in samples])
        return {"id": ids, **batch_views(images, ids, seed=self.seed, epoch=0, spec=self.spec, **vars(self.layout))}


def plain_batches(corpus_dir: str, cfg: Config, workers: int):
    manifest = corpus.load_manifest(corpus_dir)
    ds = wds.WebDataset(corpus.shard_paths(manifest, corpus_dir, cfg.data.split), shardshuffle=False,
                        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker, empty_check=False)
    ds = ds.repeat().batched(stream.BLOCK_ROWS, collation_fn=BlockViews(cfg, manifest["fields"]["image"]["shape"][0]))
    # a generator, so that closing it ends the loader's worker processes; spawned, not forked: this process runs a
    # Ray driver (the other side's), whose gRPC threads a fork copies mid-call (a forked loader crashed it, SIGSEGV).
    # Start-up is not measured (common.window starts after a warm-up batch)
    yield from torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=True,
                                           multiprocessing_context="spawn")


def ray_batches(corpus_dir: str, cfg: Config):
    parts = view_parts(cfg, corpus_dir)
    ds = stream.pretrain_dataset(cfg, corpus_dir, parts)
    ds.context.execution_options = stream.ingest_options(cfg, parts)
    yield from ds.iter_torch_batches(batch_size=stream.BLOCK_ROWS)


def _rows(batch: dict) -> int:
    return len(batch["id"])


def measure(corpus_name: str, samples: int, repeats: int, overrides: list[str], cpus_list=(1, 2)) -> list[dict]:
    corpus_dir = corpus.resolve(corpus_name)
    out = []
    ensure_ray()
    stream.quiet()
    try:
        for cpus in cpus_list:
            cfg = Config().override([f"data.cpus={cpus}", *overrides])
            # a stream of twice the warm-up batch and the window: the plan of a longer one only delays its start
            cfg = cfg.override([f"train.steps={-(-2 * (stream.BLOCK_ROWS + samples) // cfg.data.batch_size)}"])
            ours, plain = (values[1:] for values in interleave(  # the first repeat only warms Ray's workers up
                repeats + 1, lambda: window(ray_batches(corpus_dir, cfg), _rows, samples),
                lambda: window(plain_batches(corpus_dir, cfg, cpus), _rows, samples)))
            out.append(line("ingest", f"{corpus_name}: read, sha256, decode, {cfg.method.name} views; {cpus} CPU(s)",
                            ours, plain, "samples/s",
                            f"Ray Data data.cpus={cpus} vs webdataset + DataLoader(num_workers={cpus})"))
    finally:
        shutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="fmnist")
    p.add_argument("--samples", type=int, default=100000,
                   help="samples per timed window: long enough that Ray Data runs all its tasks (report.py)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpus", default="1,2", help="CPU budgets to compare at")
    p.add_argument("--out", default="benchmarks/out/ingest.json")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. method.name=dino data.n_local=2")
    args = p.parse_args()
    lines = measure(args.corpus, args.samples, args.repeats, args.overrides, [int(c) for c in args.cpus.split(",")])
    show(lines)
    write(args.out, lines, repeats=args.repeats, samples=args.samples)


if __name__ == "__main__":
    main()
