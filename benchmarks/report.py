"""`make benchmark`: every benchmark, one after another on this machine, into docs/benchmarks.json and
docs/benchmarks.md; every line of both comes from that one run. Each script runs in its own process (its own Ray
instance where it needs one) and writes its lines to a parts folder in benchmarks/out/; this merges them with the
machine, the versions and the arguments each script ran with. Each line is the median (min-max) of repeats that
measure both sides back to back (benchmarks/common.py).

A partial run (--only, not every script) never touches docs/: it writes benchmarks/out/partial-YYYYMMDD-HHMMSS.md
and .json, which say that they are partial and which scripts ran. --quick runs each script at a tiny size
(about a minute, no Ray Train run: `make benchmark-quick`, and the smoke test) into benchmarks/out/quick.md and .json.
--out DIR writes into DIR instead, under the same names. --render JSON only rewrites the .md beside a JSON this
wrote (e.g. after editing READING).

    python benchmarks/report.py [--quick] [--only ingest,engine,...] [--out DIR] [--render JSON]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib.metadata import version

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
DOCS = os.path.join(os.path.dirname(HERE), "docs")
sys.path.insert(0, HERE)
from common import cells  # noqa: E402

# name: (arguments for a full run, arguments for --quick or None where the quick run is left out)
SCRIPTS = {
    "ingest": (["--samples", "100000", "--repeats", "5"], ["--corpus", "digits", "--samples", "600", "--repeats", "2",
                                                             "--cpus", "1"]),
    "views224": (["--images", "512", "--repeats", "5"], ["--images", "8", "--corpus", "digits", "--repeats", "2"]),
    "engine": (["--repeats", "5"], ["--steps", "2", "--warmup", "1", "--repeats", "2", "model.widths=4,8",
                                    "model.depths=1,1"]),
    "train_throughput": (["--repeats", "3"], None),  # Ray Train runs: ~5 minutes a repeat
    "positions": ([], ["--quick"]),
}
SECTIONS = {
    "ingest": "Ingest: the Ray Data stream against webdataset + DataLoader, same work, equal CPUs",
    "training": "Training: sslscale pretrain against hand-written torch DDP",
    "engine": "Engine: DeepSpeed against a plain torch optimizer step (one process)",
    "MLflow": "MLflow: logging on against off",
    "scaling": "Scaling: 2 workers against 1",
    "start-up": "Fixed time per run by phase, seconds: a warm Ray instance against the first run of a fresh clone",
    "views224": "Views at 224 px on real pictures, per CPU core, and cores per GPU",
}
HOW = ("Each line compares sslscale's path with the plain alternative doing the same work (ingest, training, engine, "
       "views) or with a baseline of its own (MLflow off, 1 worker, the first run of a fresh clone). A repeat measures "
       "both sides back to back, so that a drift of the machine's speed hits both alike. Each cell is the median of "
       "the repeats with their min-max in brackets; the ratio is the median (min-max) of the per-repeat ratios, above "
       "1 where sslscale's column is ahead (rates: ours / plain). Where the ratios' range holds 1.00 (at the two "
       "decimals shown), the repeats cannot tell the sides apart and the cell says so. The JSON keeps every repeat's "
       "value and the arguments each script ran with; each script's docstring says exactly what both sides do, and "
       "in what order.")

READING = """## Where the gaps are (what measured them, what would remove them)

- Settings: every line runs at the default config; the scripts set only what their docstrings list (no
  `data.buffer_mb` or other tuning). Ingest and training keep one Ray instance up, idle, through the plain side's
  windows and runs, so its daemons' idle load falls on both sides.
- Training, fair: the DDP side runs its two loader processes beside two trainers; ours runs Ray Data's task, its
  SplitCoordinator actor, Ray Train's controller and the Ray daemons on the same two cores (py-spy and per-process
  CPU times, `benchmarks/train_throughput.py`). Ray Data's scheduling loop spun at ~0.5 CPU while waiting for
  training (now paced: ~0.1). On a GPU node the CPUs are not shared with the model, so the gap there is the
  engine's alone (`benchmarks/gpu_check.py`).
- Engine: DeepSpeed's step against torch's, same weights and memory format. The ratio moves with the machine's
  load (the line's min-max shows how far within this run). torch.profiler (10 steps, ZeRO-1 against plain): the
  convolution and BatchNorm backward kernels take 5-10% and 12-35% longer and activation-sized copies twice as
  long, the same kernels on the same shapes: memory traffic (DeepSpeed's flat fp32 gradient and parameter buffers
  beside the model's own), not extra work. Our non-finite guard (one norm per gradient, one all-reduce and read
  back) costs ~0.3 ms a step.
- Upper bounds: channels_last weights are impossible under ZeRO-1/2 (parameters are views into DeepSpeed's flat
  buffer) and DeepSpeed's initialisation refuses them at any stage; at ZeRO-0 they could be set after it
  (not tried yet).
- Ingest at 2 CPUs: Ray Data starts its second task a few seconds into a stream, so a short window measures the
  ramp, not the rate: in one clean run, the same 2-CPU stream gave ~9,000 samples/s over 20,000 samples and
  ~12,300 over 100,000. The window is 100,000 samples on both sides (~8 s at 2 CPUs). Once both tasks run, each
  takes ~0.65 CPU, the consuming process's iterator (iter_torch_batches: fetching blocks from the object store
  and cutting batches) ~0.3 and the raylet ~0.1 of the same two cores (per-process CPU sampled with psutil over a
  window); the DataLoader's workers pass batches straight to their parent. A larger run-ahead budget
  (data.buffer_mb=256) changed neither rate.
- Start-up: only a worker group kept across runs would remove the worker group phase (Ray Train's controller,
  worker actors and their process group), which Ray Train does not offer."""


def run(name: str, args: list[str], out: str) -> dict:
    t0 = time.time()
    subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py"), *args, "--out", out], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    with open(out) as f:
        return {**json.load(f), "args": args, "seconds": time.time() - t0}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"date": time.strftime("%Y-%m-%d"), "commit": _commit(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), **{p: version(p) for p in ("torch", "ray", "deepspeed", "mlflow", "numpy")}}


def _commit() -> str:
    """The git commit measured, with `+changes` when the tree differs from it ('' outside a git checkout)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    return head + ("+changes" if head and git("status", "--porcelain", "--untracked-files=no") else "")


def _intro(info: dict, run: dict) -> list[str]:
    where = f"{info['cores']}-core {info['cpu']}, {run['started']}, commit {info.get('commit') or 'unknown'}"
    versions = "Versions: " + ", ".join(f"{k} {info[k]}" for k in ("python", "torch", "ray", "deepspeed", "mlflow",
                                                                    "numpy")) + "."
    if run["kind"] == "full":
        return [f"# Benchmarks ({info['cores']}-core {info['cpu']}, {info['date']}, commit "
                f"{info.get('commit') or 'unknown'})", "",
                "Written by `make benchmark` (benchmarks/report.py) with [benchmarks.json](benchmarks.json) beside "
                "it: every line of both comes from that one run, on the same cores. " + HOW + " " + versions]
    if run["kind"] == "quick":
        return [f"# Quick benchmark run ({where})", "",
                "A smoke run (`make benchmark-quick`: benchmarks/report.py --quick): every script but "
                "train_throughput at a tiny size, to show that it runs; the numbers say nothing about speed. "
                + HOW + " " + versions]
    quick = " at --quick sizes (the numbers say nothing about speed)" if run["quick"] else ""
    return [f"# Partial benchmark run: {', '.join(run['scripts'])} ({where})", "",
            f"A partial run (`{run['command']}`) of {', '.join(run['scripts'])} only{quick}. The other sections are "
            "missing, and docs/benchmarks.md, whose lines all come from one full `make benchmark` run, was not "
            "touched. " + HOW + " " + versions]


def markdown(results: dict, info: dict, run: dict) -> str:
    lines = [*_intro(info, run), ""]
    every = [x for r in results.values() for x in r.get("lines", [])]
    for section, title in SECTIONS.items():
        rows = [(x, cells(x)) for x in every if x["section"] == section]
        if rows:
            lines += [f"## {title}", "", "| what | sslscale | plain / baseline | unit | ratio | repeats | how |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {x['what']} | {c['ours']} | {c['plain']} | {x['unit']} | {c['ratio']} | {c['repeats']} | "
                      f"{x['note']} |" for x, c in rows]
            lines.append("")
    if run["kind"] == "full":
        lines += [READING, ""]
    if "positions" in results:
        from positions import table

        lines += ["## Checkpoint position against ids consumed (benchmarks/positions.py, one measurement a row)", "",
                  table(results["positions"]["rows"]), ""]
    return "\n".join(lines)


def _destination(out: str | None, quick: bool, partial: bool) -> tuple[str, str]:
    """(folder, file name without extension): a full run docs/benchmarks, a quick one benchmarks/out/quick, a
    partial one a dated name of its own in benchmarks/out (never the full or quick run's names)."""
    if partial:
        return out or OUT, time.strftime("partial-%Y%m%d-%H%M%S")
    return (out or OUT, "quick") if quick else (out or DOCS, "benchmarks")


def _render(path: str) -> None:
    with open(path) as f:
        saved = json.load(f)
    with open(path.removesuffix(".json") + ".md", "w") as f:
        f.write(markdown({k: v for k, v in saved.items() if k in SCRIPTS}, saved["machine"], saved["run"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=",".join(SCRIPTS), help="a partial run of these scripts (never into docs/)")
    p.add_argument("--out", help="folder for the .md and .json (default: docs/ for a full run, else benchmarks/out/)")
    p.add_argument("--render", metavar="JSON", help="only rewrite the .md beside this JSON from it")
    args = p.parse_args()
    if args.render:
        return _render(args.render)
    names = args.only.split(",")
    if unknown := set(names) - set(SCRIPTS):
        p.error(f"unknown scripts {sorted(unknown)}: choose from {', '.join(SCRIPTS)}")
    partial = set(names) != set(SCRIPTS)
    folder, stem = _destination(args.out, args.quick, partial)
    parts = os.path.join(OUT if folder == DOCS else folder, f"{stem}.parts")
    os.makedirs(parts, exist_ok=True)
    run_info = {"kind": "partial" if partial else "quick" if args.quick else "full", "quick": args.quick,
                "command": shlex.join(["benchmarks/report.py", *sys.argv[1:]]),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0, results = time.time(), {}
    for name in names:
        full, quick = SCRIPTS[name]
        if not (args.quick and quick is None):
            results[name] = run(name, quick if args.quick else full, os.path.join(parts, f"{name}.json"))
    run_info.update(scripts=list(results), seconds=time.time() - t0)
    info = machine()
    path = os.path.join(folder, stem)
    with open(path + ".json", "w") as f:
        json.dump({"machine": info, "run": run_info, **results}, f, indent=1)
    with open(path + ".md", "w") as f:
        f.write(markdown(results, info, run_info))
    print(f"wrote {path}.md and {path}.json")


if __name__ == "__main__":
    main()
