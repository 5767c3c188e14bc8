"""The plots of a Ray Tune sweep (logged as artifacts on its MLflow parent run), over plain Python data, the
class-coloured scatter of a 2-D embedding map (transfer.embedding_map), a run's stepwise spectrum
(health.spectrum, drawn by `spectrum_plot` from the run's metric history, see tracking.plot_spectrum), a target's
label-efficiency curves (`label_efficiency`, from transfer.efficiency) and the linear probe's `confusion_matrix`.

A trial is a dict: `trial_id` (str), `params` (flat `a.b.c` key -> value, the searched keys among them), `score`
(the objective, NaN when the trial has none, e.g. stopped early by ASHA), `status` ("finished" | "stopped" |
"error"), `curve` ([(step, value), ...], a health signal over steps) and `last_step`. Each function writes one PNG
and returns its path; none imports mlflow or ray (tune.py gathers the trials, tracking.py logs the files). A key
absent from a trial's params skips that trial's point on that key.
"""
from __future__ import annotations

import math

import numpy as np

NO_SCORE, NO_SCORE_Y = "grey", -0.12  # colour of trials without a score; their place below the score axis


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, out_png: str) -> str:
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out_png


def _scored(trial: dict) -> bool:
    return not math.isnan(float(trial["score"]))


def _categorical(values: list) -> bool:
    """Values plotted as categories: any string, bool or other non-number among them."""
    return any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values)


def _column(trials: list[dict], key: str) -> tuple[list[int], list]:
    """(indices of the trials whose params hold `key`, their values)."""
    idx = [i for i, t in enumerate(trials) if key in t["params"]]
    return idx, [trials[i]["params"][key] for i in idx]


def _score_range(trials: list[dict]) -> tuple[float, float]:
    """(min, max) of the finite scores, widened when they are equal; (0, 1) when there are none."""
    finite = [float(t["score"]) for t in trials if _scored(t)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    pad = 0.0 if hi > lo else (abs(hi) * 0.05 or 0.5)
    return lo - pad, hi + pad


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _log_x(ax, x: list[float]) -> None:
    """A log x-axis labelled compactly ("3e-4") at 1, 3 (or 1, 2, 5 within a decade) times the powers of ten,
    only the powers over three decades or more; matplotlib's own minor labels overlap in a small panel."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    positive = [v for v in x if v > 0]
    decades = math.log10(max(positive) / min(positive)) if positive else 0.0
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0,) if decades >= 3 else (1.0, 3.0) if decades >= 1 else
                                          (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _score_panel(ax, trials: list[dict], key: str, log: bool, floor: float, jitter: np.ndarray) -> dict:
    """Draw the score against `key` on `ax` (trials without a score hollow at y=floor); returns legend label ->
    handle."""
    idx, values = _column(trials, key)
    if _categorical(values):
        cats = sorted({str(v) for v in values})
        x = [cats.index(str(v)) + jitter[i] for i, v in zip(idx, values)]
        ax.set_xticks(range(len(cats)), cats, rotation=30 if max(map(len, cats)) > 6 else 0)
        ax.set_xlim(-0.5, len(cats) - 0.5)
    else:
        x = [float(v) for v in values]
        if log:
            _log_x(ax, x)
    groups: dict[str, tuple[list, list]] = {}  # "" (scored) or the status of trials without a score -> (xs, ys)
    for i, xi in zip(idx, x):
        t = trials[i]
        group = "" if _scored(t) else t["status"]
        groups.setdefault(group, ([], []))[0].append(xi)
        groups[group][1].append(float(t["score"]) if _scored(t) else floor)
    if not idx:
        ax.text(0.5, 0.5, "no trial has this key", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_title(key, fontsize=10)
    ax.grid(alpha=0.3)
    return {f"{g} (no score)" if g else "scored trial": ax.scatter(xs, ys, s=28, zorder=3, **_marker(g))
            for g, (xs, ys) in groups.items()}


def _marker(status: str) -> dict:
    """Scatter style: filled for a scored trial (status ""), hollow grey by status for one without a score."""
    if not status:
        return dict(color="C0")
    return dict(marker={"stopped": "o", "error": "s"}.get(status, "D"), facecolors="none", edgecolors=NO_SCORE)


def score_vs_params(trials: list[dict], keys: list[str], metric: str, out_png: str, log_keys=()) -> str:
    """One panel per searched key: the score (y, shared across panels) against the key's value (x). Numeric keys
    are a scatter (log x for keys in `log_keys`), categorical ones sit at their (sorted) category with a little
    seeded jitter. Trials without a score are hollow markers on a line below the lowest score, one legend entry
    per status ("stopped (no score)")."""
    plt = _pyplot()
    lo, hi = _score_range(trials)
    floor = lo - 0.15 * (hi - lo)  # where trials without a score sit: below every scored one
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(trials))
    cols = min(len(keys), 4) or 1
    rows = math.ceil(len(keys) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    handles = {}
    for ax, key in zip(axes.flat, keys):
        handles.update(_score_panel(ax, trials, key, key in log_keys, floor, jitter))
    for ax in axes[:, 0]:
        ax.set_ylabel(metric, fontsize=9)
    axes[0, 0].set_ylim(floor - 0.08 * (hi - lo), hi + 0.08 * (hi - lo))
    if not any(map(_scored, trials)):
        axes[0, 0].set_yticks([])  # no score to read off
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=len(handles), frameon=False)
    fig.tight_layout()
    return _save(fig, plt, out_png)


def _normalise(values: list, log: bool) -> tuple[list[float], list[tuple[float, str]]]:
    """Values -> positions in [0, 1] and the (position, label) ticks of their axis: numbers min-max (log10 first
    when `log`), categories by their sorted index; all-equal values sit at 0.5."""
    if _categorical(values):
        cats = sorted({str(v) for v in values})
        pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
        return [pos[str(v)] for v in values], [(pos[c], c) for c in cats]
    raw = [float(v) for v in values]
    x = [math.log10(v) for v in raw] if log and min(raw, default=0) > 0 else raw
    if not x:
        return [], []
    lo, hi = min(x), max(x)
    if hi == lo:
        return [0.5] * len(x), [(0.5, _fmt(raw[0]))]
    return [(v - lo) / (hi - lo) for v in x], [(0.0, _fmt(min(raw))), (1.0, _fmt(max(raw)))]


def _positions(trials: list[dict], keys: list[str], log_keys) -> tuple[list[dict], list[list]]:
    """Per trial {axis index: position in [0, 1]} over the keys' axes and a last one for the score (a trial
    without a score sits at NO_SCORE_Y below it), and per axis its (position, label) ticks."""
    ys, ticks = [dict() for _ in trials], []
    scored = [i for i, t in enumerate(trials) if _scored(t)]
    columns = [(*_column(trials, key), key in log_keys) for key in keys]
    columns.append((scored, [float(trials[i]["score"]) for i in scored], False))
    for a, (idx, values, log) in enumerate(columns):
        pos, axis_ticks = _normalise(values, log)
        for i, p in zip(idx, pos):
            ys[i][a] = p
        ticks.append(axis_ticks)
    for i in set(range(len(trials))) - set(scored):
        ys[i][len(keys)] = NO_SCORE_Y
    if len(scored) < len(trials):
        ticks[-1].append((NO_SCORE_Y, "no score"))
    return ys, ticks


def _axis_ticks(ax, a: int, ticks: list[tuple[float, str]]) -> None:
    """Draw vertical axis number `a` and write its tick labels just right of it."""
    ax.axvline(a, color="black", linewidth=1, zorder=1)
    for y, label in ticks:
        ax.text(a + 0.04, y, label, fontsize=8, va="center", zorder=4,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8))


def parallel_coordinates(trials: list[dict], keys: list[str], metric: str, out_png: str, log_keys=()) -> str:
    """One vertical axis per searched key and a last one for the score; each trial is a polyline through its
    (normalised) values, coloured by score (viridis, with a colorbar). Trials without a score are grey dashed
    lines ending at "no score" below the score axis. Each axis is labelled with its real min/max or categories."""
    plt = _pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n_axes = len(keys) + 1
    ys, ticks = _positions(trials, keys, log_keys)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * n_axes + 1.5), 4.2))
    for a, axis_ticks in enumerate(ticks):
        _axis_ticks(ax, a, axis_ticks)
    norm, cmap = Normalize(*_score_range(trials)), plt.get_cmap("viridis")
    order = sorted(range(len(trials)), key=lambda i: float(trials[i]["score"]) if _scored(trials[i]) else -math.inf)
    for i in order:  # best drawn last, on top
        x, y = zip(*sorted(ys[i].items()))
        has_score = _scored(trials[i])
        ax.plot(x, y, color=cmap(norm(float(trials[i]["score"]))) if has_score else NO_SCORE,
                linestyle="-" if has_score else "--", marker="o", markersize=3, linewidth=1.5, alpha=0.9)
    ax.set_xticks(range(n_axes), list(keys) + [metric], fontsize=9)
    ax.set_xlim(-0.1, n_axes - 0.6)
    ax.set_ylim(NO_SCORE_Y - 0.08, 1.08)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    if any(map(_scored, trials)):
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=metric, pad=0.02)
    ax.set_title(f"{len(trials)} trial{'s' * (len(trials) != 1)}, coloured by {metric}", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, out_png)


def _short(trial_id: str, n: int = 12) -> str:
    return trial_id if len(trial_id) <= n else "…" + trial_id[-(n - 1):]


def health_overlay(trials: list[dict], signal: str, out_png: str) -> str:
    """Every trial's curve of `signal` (e.g. "health/rankme") against the step on one axes, labelled by its
    (shortened) trial id; a stopped trial ends in an 'x' and its label says "(stopped by ASHA)". Trials with an
    empty curve are left out of the axes and the legend."""
    plt = _pyplot()
    drawn = [t for t in trials if t["curve"]]
    colors = plt.get_cmap("tab10" if len(drawn) <= 10 else "tab20")
    ncol = 1 + len(drawn) // 20
    fig, ax = plt.subplots(figsize=(5.5 + 2.4 * ncol, 4.0))  # the legend's columns get room beside the axes
    for k, t in enumerate(drawn):
        steps, values = zip(*t["curve"])
        label = _short(t["trial_id"]) + {"stopped": " (stopped by ASHA)", "error": " (error)"}.get(t["status"], "")
        color = colors(k % colors.N)
        ax.plot(steps, values, color=color, label=label, marker="." if len(steps) < 30 else None)
        if t["status"] == "stopped":
            ax.plot(steps[-1], values[-1], marker="x", markersize=10, markeredgewidth=2, color=color)
    if drawn:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, ncol=ncol, frameon=False)
    else:
        ax.text(0.5, 0.5, f"no trial logged {signal}", ha="center", va="center", transform=ax.transAxes,
                color="grey")
    ax.set_title(signal)
    ax.set_xlabel("step")
    ax.set_ylabel(signal)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, out_png)


def class_scatter(xy: np.ndarray, y: np.ndarray, classes: int, names: list, title: str, axis: str,
                   out_png: str) -> str:
    """Points (n, 2) coloured by their class y (n,), one legend entry per class: its index, and its name when
    that says more."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7.0, 5.5))
    size = min(16.0, max(3.0, 4000 / len(xy)))  # fewer points, bigger dots
    for c in range(classes):
        name = str(names[c]) if c < len(names) else str(c)
        ax.scatter(xy[y == c, 0], xy[y == c, 1], s=size, color=cmap(c % cmap.N), label=str(c) if name == str(c)
                   else f"{c}: {name}")
    ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=2.5, fontsize=8,
              ncol=1 + classes // 25, frameon=False)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, out_png)


def spectrum_plot(steps: list[int], eigs: list[list[float]], erank: list[float], out_png: str) -> str:
    """Two panels: left, each rank-ordered eigenvalue (eigs[t][i]: the (i+1)-th largest at steps[t]) against the step
    on a log y-axis, one line per index coloured from dark (index 1, the largest) to light (index k), a colorbar
    naming them; right, the effective rank against the step. Eigenvalues of 0 (collapsed directions, padding) are
    left out of the log axis."""
    plt = _pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    k = max((len(e) for e in eigs), default=0)
    values = np.array([list(e) + [0.0] * (k - len(e)) for e in eigs], dtype=float).reshape(len(eigs), k)  # (T, k)
    norm, cmap = Normalize(1, max(k, 2)), plt.get_cmap("viridis")
    marker = "." if len(steps) < 30 else None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.0), gridspec_kw={"width_ratios": [1.4, 1.0]})
    for i in range(k):
        positive = values[:, i] > 0
        left.plot(np.asarray(steps)[positive], values[positive, i], color=cmap(norm(i + 1)), linewidth=1.2,
                  marker=marker)
    if values.size and (values > 0).any():
        left.set_yscale("log")
    else:
        left.text(0.5, 0.5, "no positive eigenvalue", ha="center", va="center", transform=left.transAxes,
                  color="grey")
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=left, pad=0.02)
    bar.set_ticks([1, max(k, 1)], labels=["1 (largest)", f"{max(k, 1)}"])
    bar.set_label("eigenvalue index")
    bar.ax.invert_yaxis()  # index 1 on top, as its line is
    left.set_title(f"top {k} eigenvalues of the embedding covariance", fontsize=10)
    right.plot(steps, erank, color="C3", marker=marker)
    right.set_title("effective rank", fontsize=10)
    for ax, label in ((left, "eigenvalue"), (right, "effective rank")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both" if ax is left else "major")
    fig.tight_layout()
    return _save(fig, plt, out_png)


LINES = {"finetune": ("C3", "-"), "linear": ("C0", "-"), "knn": ("C2", "-"), "scratch": ("k", "--"),
         "random_init/linear": ("C0", ":"), "random_init/knn": ("C2", ":")}  # protocol -> (colour, line style)


def label_efficiency(curves: dict[str, dict[float, float]], title: str, out_png: str) -> str:
    """Test accuracy against the fraction of train labels used (log x), one line per protocol (`curves`:
    protocol -> {fraction: top-1}): the pretrained encoder's protocols solid, the supervised from-scratch baseline
    dashed, the random-init encoder dotted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, points in curves.items():
        colour, style = LINES.get(name, (None, "-"))
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], style, color=colour, marker="o", label=name)
    _log_x(ax, [x for points in curves.values() for x in points])
    ax.set_xlabel("fraction of train labels used")
    ax.set_ylabel("test top-1")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, plt, out_png)


def confusion_matrix(counts: np.ndarray, names: list, title: str, out_png: str) -> str:
    """A confusion matrix (counts[true, predicted], (C, C)) as row shares: each row is one true class, so the
    diagonal is each class's recall; cells are written in when there are at most 20 classes."""
    plt = _pyplot()
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # (C, C)
    classes = len(counts)
    side = min(12.0, 3.0 + 0.45 * classes)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    labels = [str(names[c]) if c < len(names) else str(c) for c in range(classes)]
    ax.set_xticks(range(classes), labels, rotation=45 if max(map(len, labels)) > 2 else 0, ha="right", fontsize=8)
    ax.set_yticks(range(classes), labels, fontsize=8)
    if classes <= 20:
        for t in range(classes):
            for p in range(classes):
                ax.text(p, t, f"{shares[t, p]:.2f}".lstrip("0") if shares[t, p] < 1 else "1", ha="center",
                        va="center", fontsize=7, color="white" if shares[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, out_png)
