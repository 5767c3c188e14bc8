"""What a finished sweep tells its user, from plain trial records (no Ray, no MLflow here): the ranking, the ranked
table as markdown and CSV, and the exact command that retrains the winner at full length.

A trial record is a dict: trial_id, run_id (its MLflow child run), params ({searched key: value}), status
(finished | stopped | error), score (the transfer metric, NaN without one), signal (the scheduler's last value),
last_step, curve ([(step, signal value)]), scores (every transfer/... metric it logged), error (one line or '').
"""
from __future__ import annotations

import csv
import io
import math
import shlex

from sslscale.sweeps.space import as_overrides

STATUS_ORDER = {"finished": 0, "stopped": 1, "error": 2}


def rank(trials: list[dict], mode: str = "max") -> list[dict]:
    """Finished trials by score (best first for `mode`), then those without a score (stopped by the scheduler, then
    failed) by their last signal, highest first (the scheduler maximises it); NaN last within each group."""

    def key(t):
        scored = math.isfinite(t["score"])
        value, sign = (t["score"], -1.0 if mode == "max" else 1.0) if scored else (t["signal"], -1.0)
        order = 0 if scored else 1 + STATUS_ORDER.get(t["status"], 2)
        return order, not math.isfinite(value), sign * value if math.isfinite(value) else 0.0

    return sorted(trials, key=key)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def rows(trials: list[dict], keys: list[str], metric: str, signal: str) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows: the ranking metric, the trials' other transfer scores, the signal, the values."""
    others = sorted({k for t in trials for k in t["scores"]} - {metric})
    header = ["rank", "trial", "status", metric, *others, signal, "last step", *keys, "MLflow run"]
    body = [[str(i + 1), t["trial_id"], t["status"], _cell(t["score"]),
             *[_cell(t["scores"].get(k, math.nan)) for k in others], _cell(t["signal"]), str(t["last_step"]),
             *[_cell(t["params"].get(k, "")) for k in keys], t["run_id"]] for i, t in enumerate(trials)]
    return header, body


def markdown(trials: list[dict], keys: list[str], metric: str, signal: str) -> str:
    header, body = rows(trials, keys, metric, signal)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def to_csv(trials: list[dict], keys: list[str], metric: str, signal: str) -> str:
    header, body = rows(trials, keys, metric, signal)
    out = io.StringIO()
    csv.writer(out).writerows([header, *body])
    return out.getvalue()


def retrain_command(recipe: str, overrides: list[str], params: dict) -> str:
    """`sslscale pretrain --recipe R k=v ...`: the user's fixed overrides and the winner's values, at the recipe's
    own length (a train.steps override only sized the sweep; the sweep recipe's own sizing is not passed in)."""
    kept = [o for o in overrides if o.partition("=")[0].strip() != "train.steps"]
    words = ["sslscale", "pretrain", *(["--recipe", recipe] if recipe else []), *kept, *as_overrides(params)]
    return " ".join(shlex.quote(w) for w in words)
