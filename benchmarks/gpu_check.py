"""GPU check: training rate, model FLOPs utilisation (MFU) and peak memory of the sslscale engine on one GPU.

Runs the real method and engine code (sslscale.methods, sslscale.training.engine: DeepSpeed, bf16) without Ray,
MLflow or pyarrow, which the device machine lacks. Lines, each after a few untimed warm-up steps:
  mae_vitb16       MAE, ViT-B/16 (768 wide, 12 blocks, 12 heads) and the paper's decoder (512 wide, 8 blocks),
                   224 px, mask 0.75, ZeRO-1, a synthetic batch already on the GPU
  simclr_r50_z{k}  SimCLR, ResNet-50 (2048 -> 2048 -> 128 projector), 224 px, ZeRO-k (0, 1, 2), synthetic batch
  simclr_r50_data  the same at ZeRO-1 fed by the real data path: PNG-decoded pictures of a prepared corpus made into
                   views by views.batch_views on CPU workers of a torch DataLoader, as stream.make_views does on
                   Ray Data's tasks (`loader_images_per_s`: that path alone, without training)
images/s counts images (SimCLR: two views each). FLOPs are counted from the model (torch.utils.flop_counter: matmuls,
convolutions and attention of one forward and backward, on a fresh copy), and MFU divides the achieved FLOP/s by
the dense bf16 peak of the GPU found by name (H100 SXM and H200: 989 TFLOP/s; --peak-tflops overrides). Peak memory
is torch.cuda.max_memory_allocated over the line (on a CPU: the process' peak RSS). Writes one JSON (--out, default
$OUT/gpu_check.json when $OUT is set, else runs/gpu_check.json) after each line, and prints a table. Where DeepSpeed
cannot be imported it says so and times a plain torch loop instead (same method and optimizer, bf16 autocast).

    python benchmarks/gpu_check.py            # all lines, about 2-4 minutes on one H100/H200
    python benchmarks/gpu_check.py --quick    # MAE, SimCLR ZeRO-1 synthetic and real data; under a minute
    python benchmarks/gpu_check.py --tiny --corpus DIR   # CPU, tiny models at 32 px, a few seconds (tests)

On the device machine (`make gpu-carry` first fills .carry/: the wheels it lacks, DeepSpeed built from its sdist,
and a corpus of 256 px clip-art pictures), the device tool's `run` with carry [".carry"] and timeout_s 420:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/wheels/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 && python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json

(--quick in place of the last part for a first look; .carry/sdist keeps DeepSpeed's sdist in case its wheel must be
rebuilt there: `python3 -m pip install --no-build-isolation --no-deps --target /tmp/site .carry/sdist/*.tar.gz`.)
"""
from __future__ import annotations

import argparse
import gc
import io
import itertools
import json
import os
import platform
import resource
import sys
import tarfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo's sslscale and pipelines, installed or not

from pipelines import load_recipe  # noqa: E402
from sslscale.checks import validate  # noqa: E402
from sslscale.data.views import ViewSpec, batch_views  # noqa: E402
from sslscale.encoders.resnet import ResNet50  # noqa: E402
from sslscale.methods import build_method, method_class, view_layouts  # noqa: E402
from sslscale.training.optim import build_optimizer  # noqa: E402

PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12))  # dense bf16 FLOP/s, first match by name
SIZES = {  # view side, synthetic pictures' side, MAE and SimCLR batches, steps, synthetic SimCLR lines' ZeRO stages
    "full": dict(size=224, source=256, mae_batch=256, batch=256, warmup=10, steps=40, zero=(0, 1, 2), r50_width=64),
    "quick": dict(size=224, source=256, mae_batch=256, batch=256, warmup=3, steps=10, zero=(1,), r50_width=64),
    "tiny": dict(size=32, source=32, mae_batch=4, batch=2, warmup=1, steps=2, zero=(0, 1, 2), r50_width=8),
}


class TorchLoop:
    """Stand-in for sslscale.training.engine.Engine where DeepSpeed cannot be imported: the same method and optimizer
    (optim.build_optimizer), bf16 autocast over fp32 weights on a GPU, gradient clipping at optim.clip."""

    def __init__(self, method: torch.nn.Module, cfg):
        self.cfg, self.device = cfg, device_of(cfg)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.method = method.to(self.device)
        self.optimizer = build_optimizer(self.method, cfg.optim)

    def train_step(self, micro_batches: list[dict], log: bool = True) -> dict:
        self.method.train()
        for batch in micro_batches:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                loss = self.method(to_float(batch, self.device, torch.float32))["loss"] / len(micro_batches)
            loss.backward()
        if self.cfg.optim.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss) * len(micro_batches)} if log else {}


def load_engine(plain: bool = False):
    """(sslscale.training.engine.Engine, None), or (TorchLoop, why) when DeepSpeed itself cannot be imported or
    `plain`."""
    if plain:
        return TorchLoop, "--plain-torch"
    try:
        from sslscale.training.engine import Engine
        return Engine, None
    except Exception:  # noqa: BLE001 - DeepSpeed's import fails in many ways; tell whose fault it is below
        try:
            import deepspeed  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return TorchLoop, f"DeepSpeed cannot be imported ({type(e).__name__}: {str(e)[:200]})"
        raise  # DeepSpeed imports: sslscale.training.engine itself needs something this machine lacks


def make_method(cfg, s: dict) -> torch.nn.Module:
    """methods.build_method, except that --tiny narrows the ResNet-50 (no config key sets its width)."""
    if cfg.model.encoder != "resnet50" or s["r50_width"] == 64:
        return build_method(cfg, in_channels=3, image_size=s["size"])
    return method_class(cfg.method.name)(ResNet50(in_channels=3, image_size=s["size"], width=s["r50_width"]),
                                    cfg.method.chosen)


def device_of(cfg) -> torch.device:
    return torch.device("cuda" if cfg.train.use_gpu != "false" and torch.cuda.is_available() else "cpu")


def to_float(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """uint8 views -> floats in [0, 1] on `device`, `keep` to `device`: what Engine.to_device does."""
    return {k: v.to(device).to(dtype).div_(255) if k.startswith(("view_", "local_")) else v.to(device)
            for k, v in batch.items()}


def common(s: dict, batch: int, zero: int, tiny: bool) -> list[str]:
    return [f"data.batch_size={batch}", "train.workers=1", f"engine.zero_stage={zero}", "engine.precision=auto",
            f"train.steps={s['warmup'] + s['steps']}", f"optim.warmup_steps={s['warmup']}",
            f"train.use_gpu={'false' if tiny else 'true'}"]


def mae_config(s: dict, tiny: bool):
    model = (["model.patch_size=8", "model.dim=32", "model.vit_depth=2", "model.heads=2", "method.mae.decoder_dim=32",
              "method.mae.decoder_depth=1"] if tiny else
             ["model.patch_size=16", "model.dim=768", "model.vit_depth=12", "model.heads=12",
              "method.mae.decoder_dim=512", "method.mae.decoder_depth=8"])
    return validate(load_recipe("mae_fmnist").override([*model, *common(s, s["mae_batch"], 1, tiny)]))


def simclr_config(s: dict, zero: int, tiny: bool):
    """SimCLR as on ImageNet: 2048-wide projector, crops from 8% of the area, grayscale 0.2, blur 0.5."""
    cfg = load_recipe("simclr_fmnist").override([
        "method.simclr.proj_hidden=2048", "method.simclr.proj_dim=128", "data.crop_min_scale=0.08",
        "data.grayscale=0.2", "data.blur=0.5", "model.encoder=resnet50", *common(s, s["batch"], zero, tiny)])
    return validate(cfg)


def synthetic_batch(cfg, s: dict, device: torch.device) -> dict:
    """Views of random pictures made by the real view code, moved to `device` once."""
    n = cfg.data.batch_size
    images = np.random.default_rng(0).integers(0, 256, (n, s["source"], s["source"], 3), dtype=np.uint8)
    views = batch_views(images, np.arange(n), seed=0, epoch=0, spec=ViewSpec.from_config(cfg, s["size"]),
                        **vars(view_layouts(cfg, {"image": s["size"]})["image"]))
    return {k: torch.from_numpy(v).to(device) for k, v in views.items()}


def read_corpus(folder: Path) -> list[bytes]:
    """The PNG bytes of a prepared WebDataset corpus' train split, read with tarfile (corpus.py needs pyarrow)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest["format"] != "webdataset" or manifest["fields"]["image"]["shape"][2] != 3:
        raise ValueError(f"{folder} is not an RGB WebDataset corpus: prepare one with `sslscale data prepare`")
    pngs = []
    for shard in manifest["splits"]["train"]["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            pngs += [tar.extractfile(m).read() for m in tar if m.name.endswith(".image.png")]
    return pngs


class CorpusViews(torch.utils.data.Dataset):
    """Item i: the views of batch i, decoded and augmented on a DataLoader worker as stream.make_views does on a
    Ray Data task; pictures in order, round and round the corpus (the epoch counts the rounds)."""

    def __init__(self, pngs: list[bytes], cfg, size: int, steps: int):
        self.pngs, self.batch, self.steps, self.seed = pngs, cfg.data.batch_size, steps, cfg.data.seed
        self.spec, self.layout = ViewSpec.from_config(cfg, size), view_layouts(cfg, {"image": size})["image"]

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict:
        at = i * self.batch + np.arange(self.batch)
        ids, epoch = at % len(self.pngs), int(at[0] // len(self.pngs))
        images = np.stack([np.asarray(Image.open(io.BytesIO(self.pngs[j])).convert("RGB")) for j in ids])
        views = batch_views(images, ids, seed=self.seed, epoch=epoch, spec=self.spec, **vars(self.layout))
        return {k: torch.from_numpy(v) for k, v in views.items()}


def loader(pngs: list[bytes], cfg, s: dict, workers: int) -> torch.utils.data.DataLoader:
    data = CorpusViews(pngs, cfg, s["size"], s["warmup"] + s["steps"])
    return torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers,
                                       pin_memory=device_of(cfg).type == "cuda")


def loader_rate(pngs: list[bytes], cfg, s: dict, workers: int) -> float:
    """Images/s of the data path alone: every batch of a fresh loader, the first (workers starting) untimed."""
    batches = iter(loader(pngs, cfg, s, workers))
    next(batches)
    start, n = time.perf_counter(), sum(1 for _ in batches)
    return n * cfg.data.batch_size / (time.perf_counter() - start)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def count_flops(cfg, batch: dict, dtype: torch.dtype, s: dict) -> int:
    """FLOPs of one forward and backward of the method on `batch`, on a fresh copy of the model."""
    from torch.utils.flop_counter import FlopCounterMode

    device = device_of(cfg)
    model = make_method(cfg, s).to(device=device, dtype=dtype).train()
    with FlopCounterMode(display=False) as counter:
        model(to_float(batch, device, dtype))["loss"].backward()
    del model
    free()
    return counter.get_total_flops()


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(runner, batches, s: dict) -> tuple[float, dict]:
    """Seconds of s["steps"] steps after s["warmup"] untimed ones, and the last step's logs (only the last step
    logs, which reads the loss back: a run logs every train.log_every steps)."""
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    for _ in range(s["warmup"]):
        runner.train_step([next(batches)], log=False)
    sync()
    start = time.perf_counter()
    for i in range(s["steps"]):
        out = runner.train_step([next(batches)], log=i == s["steps"] - 1)
    sync()
    return time.perf_counter() - start, out


def run_line(name: str, cfg, batches, s: dict, runner_cls, flops: int, peak: float | None) -> dict:
    free()
    torch.manual_seed(0)
    runner = runner_cls(make_method(cfg, s), cfg)
    seconds, out = timed(runner, batches, s)
    device, spec = runner.device, runner.method.encoder.spec()
    params = sum(p.numel() for p in runner.method.encoder.parameters())
    del runner
    rate = s["steps"] * cfg.data.batch_size / seconds
    achieved = flops * s["steps"] / seconds
    line = {"name": name, "method": cfg.method.name, "encoder": spec["name"], "encoder_kwargs": spec["kwargs"],
            "encoder_params": params, "image_size": s["size"], "batch": cfg.data.batch_size,
            "zero_stage": None if runner_cls is TorchLoop else cfg.engine.zero_stage, "steps": s["steps"],
            "images_per_s": rate, "step_ms": 1000 * seconds / s["steps"],
            "flops_per_image": flops / cfg.data.batch_size, "tflops": achieved / 1e12,
            "mfu": achieved / peak if peak else None,
            "peak_mem_gib": peak_memory_gib(device), "loss": out["loss"]}
    free()
    return line


def gpu_peak(args) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, f"--peak-tflops {args.peak_tflops:g}"
    if not torch.cuda.is_available() or args.tiny:
        return None, "none (CPU): no MFU"
    name = torch.cuda.get_device_name()
    for key, flops in PEAKS:
        if key in name:
            return flops, f"{key} dense bf16 {flops / 1e12:g} TFLOP/s ({name})"
    return None, f"unknown GPU {name!r}: no MFU (pass --peak-tflops)"


def versions(engine_note: str | None) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "numpy": np.__version__,
           "pillow": Image.__version__, "deepspeed": None,
           "engine": "deepspeed" if engine_note is None else f"torch: {engine_note}"}
    if engine_note is None:
        import deepspeed
        out["deepspeed"] = deepspeed.__version__
    return out


def plan(args, s: dict, runner_cls) -> list[tuple[str, object, str]]:
    """(line name, config, data: synthetic | corpus) in the order they run."""
    lines = [("mae_vitb16" if not args.tiny else "mae_vit_tiny", mae_config(s, args.tiny), "synthetic")]
    if runner_cls is TorchLoop:  # no ZeRO without DeepSpeed
        lines.append(("simclr_r50", simclr_config(s, 0, args.tiny), "synthetic"))
    else:
        lines += [(f"simclr_r50_z{z}", simclr_config(s, z, args.tiny), "synthetic") for z in s["zero"]]
    return lines + [("simclr_r50_data", simclr_config(s, 1, args.tiny), "corpus")]


def measure(name: str, cfg, data: str, args, s: dict, runner_cls, flops: dict, pngs) -> dict:
    """One line: FLOPs counted once per (method, batch), then the timed steps on synthetic or corpus batches."""
    device = device_of(cfg)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    key = (cfg.method.name, cfg.data.batch_size)
    synthetic = synthetic_batch(cfg, s, device) if data == "synthetic" or key not in flops else None
    if key not in flops:
        flops[key] = count_flops(cfg, synthetic, dtype, s)
    if data == "synthetic":
        return {**run_line(name, cfg, itertools.repeat(synthetic), s, runner_cls, flops[key], args.peak), "data": data}
    del synthetic
    alone = loader_rate(pngs, cfg, s, args.workers)
    line = run_line(name, cfg, iter(loader(pngs, cfg, s, args.workers)), s, runner_cls, flops[key], args.peak)
    return {**line, "data": data, "loader_images_per_s": alone}


def run(args, s: dict, report: dict) -> None:
    runner_cls, _ = load_engine(args.plain_torch)
    pngs = read_corpus(args.corpus) if args.corpus else None
    flops: dict[tuple, int] = {}
    for name, cfg, data in plan(args, s, runner_cls):
        if data == "corpus" and pngs is None:
            print(f"{name}: skipped, no corpus (run `make gpu-carry`, or pass --corpus DIR)", flush=True)
            report["skipped"].append({"name": name, "reason": "no corpus"})
            continue
        start = time.perf_counter()
        try:
            line = measure(name, cfg, data, args, s, runner_cls, flops, pngs)
        except Exception as e:  # noqa: BLE001 - one failed line (out of memory, say) must not lose the others
            traceback.print_exc()
            line = {"name": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            free()
        report["lines"].append({**line, "line_seconds": time.perf_counter() - start})
        print(row(line), flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


def row(line: dict) -> str:
    if "error" in line:
        return f"{line['name']:<18} FAILED {line['error']}"
    mfu = f"{100 * line['mfu']:5.1f}%" if line["mfu"] is not None else "    -"
    data = f"  loader alone {line['loader_images_per_s']:,.0f} img/s" if "loader_images_per_s" in line else ""
    return (f"{line['name']:<18} {line['images_per_s']:>9,.1f} img/s {line['step_ms']:>8.1f} ms/step "
            f"{line['tflops']:>7.1f} TFLOP/s  MFU {mfu}  peak {line['peak_mem_gib']:6.2f} GiB{data}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer lines and steps: under a minute on one GPU")
    mode.add_argument("--tiny", action="store_true", help="CPU, tiny models at 32 px: a few seconds (tests)")
    default_out = Path(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else ROOT / "runs/gpu_check.json"
    p.add_argument("--out", type=Path, default=default_out, help="the JSON report (default: %(default)s)")
    default_corpus = ROOT / ".carry/corpus"
    p.add_argument("--corpus", type=Path, default=default_corpus if (default_corpus / "manifest.json").is_file()
                   else None, help="a prepared RGB WebDataset corpus (default: .carry/corpus when there)")
    p.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)),
                   help="DataLoader worker processes for the real data path (default: %(default)s)")
    p.add_argument("--steps", type=int, help="timed steps per line (default: by mode)")
    p.add_argument("--peak-tflops", type=float, help="the peak that MFU divides by (default: found by GPU name)")
    p.add_argument("--plain-torch", action="store_true", help="time the plain torch loop, not the engine")
    args = p.parse_args()
    s = dict(SIZES["tiny" if args.tiny else "quick" if args.quick else "full"])
    s["steps"] = args.steps or s["steps"]
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device here: run this on the GPU machine, or pass --tiny for the CPU check", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # as train.train_loop does (train.threads_per_worker); DataLoader workers take 1 each
    _, engine_note = load_engine(args.plain_torch)
    if engine_note:
        print(f"NOTE: {engine_note}: timing a plain torch loop (AdamW, bf16 autocast) instead of the engine",
              flush=True)
    args.peak, peak_source = gpu_peak(args)
    print(f"peak used for MFU: {peak_source}", flush=True)
    report = {"mode": "tiny" if args.tiny else "quick" if args.quick else "full", "versions": versions(engine_note),
              "peak_flops": args.peak, "peak_source": peak_source, "sizes": s, "lines": [], "skipped": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run(args, s, report)
    report["seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join([json.dumps(report["versions"]), f"peak used for MFU: {peak_source}",
                     *map(row, report["lines"]), f"wrote {args.out} in {report['seconds']:.0f} s"]))
    return 1 if any("error" in line for line in report["lines"]) else 0


if __name__ == "__main__":
    sys.exit(main())
