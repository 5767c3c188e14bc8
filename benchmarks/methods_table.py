"""Every pretext method on Fashion-MNIST under one fixed CPU budget each, scored the same way: the results table.

    python benchmarks/methods_table.py [--minutes 10] [--recipes simclr_fmnist,dino_fmnist,...] [--probe-steps 30]
                                       [--rerun]

For each recipe: a short probe run measures its steady step time on this machine (median of the logged
samples/s after warm-up), the budget sets train.steps (so every method trains for about the same minutes, and
its schedules end where they should), then the real run pretrains through sslscale.pretrain (2 Ray Train
workers, DeepSpeed, MLflow) and scores the encoder on the Fashion-MNIST test split (kNN, linear probe) next to the
random-init encoder of the same architecture and raw pixels. One JSON line per finished method goes to
runs/methods.jsonl (a rerun skips the recipes already there, so a long measurement can stop and go on; --rerun
measures the listed recipes again, after a recipe changed), and the table between the TABLE markers of
docs/methods.md and the short one between the METHODS markers of README.md are rewritten from the newest line of
each recipe. Run it from the repo root, with
nothing else heavy on the machine: the budget is wall-clock time. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC, README, ROWS = ROOT / "docs" / "methods.md", ROOT / "README.md", ROOT / "runs" / "methods.jsonl"
RECIPES = ["simclr_fmnist", "moco_fmnist", "byol_fmnist", "dino_fmnist", "barlow_fmnist", "vicreg_fmnist",
           "mae_fmnist", "rotation_fmnist", "denoising_ae_fmnist"]  # by family: the tables' row order


def step_seconds(cfg, probe_steps: int) -> float:
    """Median seconds per training step (checkpoint time excluded) over a probe run's steps after the 5th."""
    from sslscale import pretrain
    from sslscale.runtime import tracking

    probe = cfg.override([f"train.steps={probe_steps}", f"train.checkpoint_every={probe_steps}",
                          "transfer.enabled=false", "tracking.experiment=methods-table-probes"])
    result = pretrain(probe)
    rates = [v for s, v in tracking.history(result.tracking_uri, result.run_id, "samples_per_s") if s > 5]
    return cfg.data.batch_size / statistics.median(rates)


def budget_overrides(cfg, steps: int) -> list[str]:
    """train.steps for the budget, and the intervals and warm-ups the recipes size as fractions of the run."""
    items = [f"train.steps={steps}", f"train.checkpoint_every={max(1, steps // 4)}",
             f"train.health_every={max(1, steps // 16)}", f"optim.warmup_steps={max(1, steps // 16)}"]
    if cfg.method.name == "dino":
        items += [f"method.dino.teacher_temp_warmup={steps // 4}", f"method.dino.freeze_last_layer={steps // 100}"]
    return items


def measure(recipe: str, minutes: float, probe_steps: int) -> dict:
    from pipelines import load_recipe
    from sslscale import pretrain
    from sslscale.runtime import tracking

    cfg = load_recipe(recipe).override(["tracking.experiment=methods-table"])
    seconds = step_seconds(cfg, probe_steps)
    steps = max(probe_steps, int(minutes * 60 / seconds))
    result = pretrain(cfg.override(budget_overrides(cfg, steps)))
    stamps = [m.timestamp for m in tracking.client(result.tracking_uri).get_metric_history(result.run_id, "loss")]
    scores = {k.split("/", 1)[1]: v for k, v in result.scores.items()}  # "fmnist/knn_top1" -> "knn_top1"
    return {"recipe": recipe, "method": cfg.method.name, "encoder": cfg.model.encoder, "steps": steps,
            "step_s": round(seconds, 3), "train_min": round((max(stamps) - min(stamps)) / 60000, 1),
            "run_id": result.run_id, "scores": scores, "budget_min": minutes, "when": time.strftime("%Y-%m-%d")}


def _pct(row: dict, key: str) -> str:
    return f"{100 * row['scores'][key]:.1f}" if key in row["scores"] else "-"


def table(rows: list[dict]) -> str:
    """docs/methods.md: steps, time, both scores, the random-init scores and the MLflow run of every method."""
    lines = ["| method | encoder | steps (s/step) | train min | kNN | linear | random-init kNN / linear | "
             "MLflow run |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['encoder']} | {r['steps']} ({r['step_s']}) | {r['train_min']} | "
                     f"{_pct(r, 'knn_top1')} | {_pct(r, 'linear_top1')} | {_pct(r, 'random_init/knn_top1')} / "
                     f"{_pct(r, 'random_init/linear_top1')} | `{r['run_id']}` |")
    if rows:  # the same pixels for every run
        lines.append(f"| raw pixels | - | - | - | {_pct(rows[0], 'pixels/knn_top1')} | "
                     f"{_pct(rows[0], 'pixels/linear_top1')} | - | - |")
    return "\n".join(lines)


def short_table(rows: list[dict]) -> str:
    """README.md: each score with the random-init encoder's in brackets."""
    lines = ["| method | kNN | linear |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} ({r['encoder']}) | {_pct(r, 'knn_top1')} ({_pct(r, 'random_init/knn_top1')}) | "
                     f"{_pct(r, 'linear_top1')} ({_pct(r, 'random_init/linear_top1')}) |")
    if rows:
        lines.append(f"| raw pixels | {_pct(rows[0], 'pixels/knn_top1')} | {_pct(rows[0], 'pixels/linear_top1')} |")
    return "\n".join(lines)


def replace_between(path: Path, marker: str, body: str) -> None:
    """Rewrite what lies between <!-- {marker} BEGIN --> and <!-- {marker} END --> in path."""
    begin, end = f"<!-- {marker} BEGIN -->", f"<!-- {marker} END -->"
    head, _, rest = path.read_text().partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{body}\n{end}{tail}")


def render(rows: list[dict]) -> None:
    """Both tables from the newest row of each recipe, in RECIPES order."""
    newest = {r["recipe"]: r for r in rows}
    rows = sorted(newest.values(), key=lambda r: RECIPES.index(r["recipe"]) if r["recipe"] in RECIPES else 99)
    replace_between(DOC, "TABLE", table(rows))
    replace_between(README, "METHODS", short_table(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per method")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    parser.add_argument("--probe-steps", type=int, default=30)
    parser.add_argument("--rerun", action="store_true", help="measure the listed recipes even if already measured")
    args = parser.parse_args()
    ROWS.parent.mkdir(exist_ok=True)
    done = [json.loads(line) for line in ROWS.read_text().splitlines()] if ROWS.exists() else []
    for recipe in args.recipes.split(","):
        if not args.rerun and any(r["recipe"] == recipe and r["budget_min"] == args.minutes for r in done):
            continue
        row = measure(recipe, args.minutes, args.probe_steps)
        with ROWS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
        print(json.dumps(row), flush=True)
        render([r for r in done if r["budget_min"] == args.minutes])  # after each method: a stop loses none


if __name__ == "__main__":
    main()
