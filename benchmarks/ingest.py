"""Ingest rate, side by side in one run on the same cores: the Ray Data path (read shards, decode, 2 views) against
plain webdataset + torch DataLoader (num_workers=2) doing the same work with the same view functions.

    python benchmarks/ingest.py [--corpus fmnist] [--samples 20000]

Prints samples/s for each and the ratio ray/plain. Not a test: numbers depend on the machine."""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import webdataset as wds

from sslscale import corpus, stream
from sslscale.config import Config
from sslscale.runtime import ensure_ray
from sslscale.views import batch_views


def plain_rate(corpus_dir: str, cfg: Config, samples: int) -> float:
    manifest = corpus.load_manifest(corpus_dir)
    spec = stream.view_spec(cfg, manifest["fields"]["image"]["shape"][0])

    def views(sample):
        sid = int(sample["__key__"])
        img = corpus.decode_image(sample["image.png"])
        v = batch_views(img[None], np.array([sid]), seed=cfg.data.seed, epoch=0, spec=spec)
        return {"id": sid, "view_0": v["view_0"][0], "view_1": v["view_1"][0]}

    ds = wds.WebDataset(corpus.shard_paths(manifest, corpus_dir, "train"), shardshuffle=False,
                        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker).map(views)
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=2)
    return _rate(iter(loader), samples, lambda b: len(b["id"]))


def ray_rate(corpus_dir: str, cfg: Config, samples: int) -> float:
    ensure_ray()
    stream.quiet()
    ds = stream.pretrain_dataset(cfg, corpus_dir)
    ds.context.execution_options = stream.ingest_options(cfg)
    return _rate(iter(ds.iter_torch_batches(batch_size=256)), samples, lambda b: len(b["id"]))


def _rate(it, samples: int, count) -> float:
    count(next(it))  # start-up (process pools, Ray tasks) is not ingest
    seen, t0 = 0, time.perf_counter()
    while seen < samples:
        seen += count(next(it))
    return seen / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="fmnist")
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.cpus=2")
    args = p.parse_args()
    cfg = Config().override(["train.steps=1000", *args.overrides])
    corpus_dir = corpus.resolve(args.corpus)
    plain = plain_rate(corpus_dir, cfg, args.samples)
    ray_ = ray_rate(corpus_dir, cfg, args.samples)
    print(f"plain webdataset + DataLoader(num_workers=2): {plain:8.0f} samples/s")
    print(f"Ray Data (data.cpus={cfg.data.cpus}):                 {ray_:8.0f} samples/s")
    print(f"ratio ray/plain: {ray_ / plain:.2f}")


if __name__ == "__main__":
    main()
