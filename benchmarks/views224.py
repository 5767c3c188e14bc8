"""Views at 224 px on real RGB pictures, per CPU core, and the cores that keep one GPU fed.

Reads the clip-art corpus (`make data/clipart/manifest.json`: ~1,900 openclipart-png pictures at 256 px), then on
one core (one process, one thread): decodes PNGs, and makes SimCLR's two ImageNet-style views per picture (crop area
0.08-1, flip, colour jitter 0.4 with p 0.8, grayscale 0.2, blur 0.5; views.batch_views, blocks of 256), side by side
with the same augmentations done per picture in PIL (the plain alternative, as torchvision's PIL transforms do it).
Each repeat times, one after another, decoding all the pictures, our views of them and PIL's views (after one
untimed decode); every line is the median (min-max) of the repeats (common.line), its ratio of the per-repeat ratios.

Sizing: a GPU training SimCLR ResNet-50 at 224 px consumes samples at half its ResNet-50 training rate (two views a
sample). NVIDIA publishes 2,470 img/s for ResNet-50 v1.5 training on one A100 80GB in mixed precision
(DeepLearningExamples, PyTorch, 21.03 container); the H100 figure here assumes 2x that (--h100-images-per-s) until
gpu_check.py measures it. Cores per GPU = GPU samples/s / (samples/s one core makes). Not a test.

    python benchmarks/views224.py [--corpus data/clipart] [--images 512] [--repeats 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleave, line, show, write  # noqa: E402

from sslscale.data import corpus  # noqa: E402
from sslscale.data.modalities.image import decode_image  # noqa: E402
from sslscale.data.shards import read_shard  # noqa: E402
from sslscale.data.views import ViewSpec, batch_views  # noqa: E402

A100_IMAGES_PER_S = 2470.0
SPEC = ViewSpec(size=224, crop_min_scale=0.08, flip=0.5, jitter=0.4, jitter_prob=0.8, grayscale=0.2, blur=0.5)


def _pngs(corpus_dir: str, n: int) -> list[bytes]:
    manifest, out = corpus.load_manifest(corpus_dir), []
    for shard in manifest["splits"]["train"]["shards"]:
        out += [r[1][0] for r in read_shard(os.path.join(corpus_dir, shard["name"]), "webdataset")]
        if len(out) >= n:
            break
    return out[:n]


def _pil_view(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """One SimCLR view the plain way, per picture in PIL (what torchvision's PIL transforms do)."""
    w, h = img.size
    area = w * h * rng.uniform(0.08, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, int(round(np.sqrt(area * aspect)))), min(h, int(round(np.sqrt(area / aspect))))
    left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    out = img.resize((224, 224), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    if rng.random() < 0.8:
        for enhance in rng.permutation([ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]):
            out = enhance(out).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.2:
        out = ImageOps.grayscale(out).convert("RGB")
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 2.0)))
    return np.asarray(out).transpose(2, 0, 1)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(corpus_dir: str, n: int, h100_images_per_s: float, repeats: int) -> list[dict]:
    pngs = _pngs(corpus.resolve(corpus_dir), n)
    decoded = [decode_image(p) for p in pngs]
    images, ids = np.stack(decoded), np.arange(len(decoded))
    rng = np.random.default_rng(0)
    pil = [Image.fromarray(im[..., 0] if im.shape[2] == 1 else im).convert("RGB") for im in decoded]
    decode_s, ours_s, plain_s = interleave(
        repeats, lambda: _timed(lambda: [decode_image(p) for p in pngs]),
        lambda: _timed(lambda: [batch_views(images[i : i + 256], ids[i : i + 256], seed=0, epoch=0, spec=SPEC)
                                for i in range(0, len(ids), 256)]),
        lambda: _timed(lambda: [_pil_view(im, rng) for im in pil for _ in range(2)]))
    n = len(ids)
    per_core = [n / (d + o) for d, o in zip(decode_s, ours_s)]  # samples (decode + 2 views) one core makes per second
    lines = [line("views224", "2 SimCLR views at 224 px of 256 px pictures, 1 core", [2 * n / s for s in ours_s],
                  [2 * n / s for s in plain_s], "views/s",
                  "views.batch_views (numpy, per block) vs the same augmentations per picture in PIL"),
             line("views224", "PNG decode, 256 px RGB, 1 core", [n / s for s in decode_s], None, "images/s"),
             line("views224", "a SimCLR sample (decode + 2 views), 1 core", per_core, None, "samples/s")]
    for gpu, images_per_s in (("A100 (published 2,470 img/s)", A100_IMAGES_PER_S),
                              (f"H100 (assumed {h100_images_per_s:,.0f} img/s)", h100_images_per_s)):
        lines.append(line("views224", f"CPU cores to feed one {gpu} for SimCLR ResNet-50 at 224 px",
                          [images_per_s / 2 / x for x in per_core], None, "cores",
                          "GPU samples/s = ResNet-50 img/s / 2 views; cores = that / samples/s per core"))
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="data/clipart")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--h100-images-per-s", type=float, default=2 * A100_IMAGES_PER_S)
    p.add_argument("--out", default="benchmarks/out/views224.json")
    args = p.parse_args()
    lines = measure(args.corpus, args.images, args.h100_images_per_s, args.repeats)
    show(lines)
    write(args.out, lines, repeats=args.repeats)


if __name__ == "__main__":
    main()
