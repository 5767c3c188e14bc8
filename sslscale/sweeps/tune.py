"""Ray Tune, in one place: sweeps over pretext-task settings, ranked by transfer score, one MLflow parent per sweep.

`sweep(cfg, space, ...)` checks the space against the config's validator, opens the parent run, and runs one Tune
function trial per point. A trial calls the same `pretrain(config)` as the CLI (real Ray Train, DeepSpeed and Ray
Data, then the transfer evaluation) as a child run tagged with its Tune trial id. Rank 0's reports reach Tune through
`TuneReportCallback` on the trainer: the label-free health signal on health steps (what ASHA compares) and the
transfer metric as NaN until the trial's last report carries its score (what the searcher and the ranking use).
A trial reserves only its driver (`train.driver_resource`); Ray Train V2 places its workers in a placement group of
their own, so concurrency is capped from the cluster's CPUs, and at 1 with an sqlite store.
`resume(name)` continues a killed sweep with `Tuner.restore` from the sweep's own folder: finished trials stay,
an unfinished one resumes its own child run from its last checkpoint. Tracking is our own (tracking.py), not
MLflowLoggerCallback, which forgets its trial -> run map on restore.
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from sslscale import storage
from sslscale.checks import driver_resource, score_names
from sslscale.config import Config
from sslscale.data import corpus
from sslscale.errors import SslscaleError, reason
from sslscale.runtime import tracking
from sslscale.runtime.cluster import Need, capacities, cluster_resources, describe, ensure_ray, fits, require
from sslscale.sweeps import artifacts, report, space as spaces
from sslscale.training.health import HEALTH_KEYS

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter honours verbose=0; _Progress prints instead
SIGNAL = "health/rankme"  # ASHA's default metric: label-free, cheap, reported on every health step


@dataclass
class SweepResult:
    name: str
    folder: str
    parent_run_id: str
    trials: list  # ranked trial records (see report.py); empty when a finished sweep is resumed
    best_config: Config | None
    best_run_id: str
    table: str  # markdown
    command: str  # retrains the winner at full length


def _absolute(cfg: Config) -> Config:
    """Paths made absolute before any trial starts (Tune changes each trial's working directory)."""
    cfg = Config.from_dict(cfg.to_dict())
    cfg.data.corpus = corpus.resolve(cfg.data.corpus)
    cfg.transfer.target = corpus.resolve(cfg.transfer.target)  # a sweep always scores (_check_options)
    cfg.train.storage = storage.absolute(cfg.train.storage)
    cfg.model.init = storage.absolute(cfg.model.init) if cfg.model.init else ""
    cfg.tracking.uri = tracking.resolve_uri(cfg.tracking.uri)
    return cfg


def _target(cfg: Config) -> str:
    return storage.name(cfg.transfer.target)


def metrics(cfg: Config) -> list[str]:
    """The transfer scores a trial of cfg logs, any of which can rank a sweep; the first is the default."""
    return [f"transfer/{_target(cfg)}/{name}" for name in score_names(cfg.transfer)]


def default_metric(cfg: Config) -> str:
    return metrics(cfg)[0]


MAX_CONCURRENT = 64  # trials at once on a cluster an autoscaler may grow without limit


def _one_writer(requested: int, uri: str) -> bool:
    """Whether the store takes one trial at a time (sqlite: other nodes cannot reach the file, concurrent writers
    lock it); one line where more were asked for."""
    if uri.startswith("sqlite:") and requested > 1:
        raise SslscaleError(f"--max-concurrent {requested} needs an MLflow server (tracking.uri=http://...): "
                            f"trials cannot share the sqlite store {uri}")
    return uri.startswith("sqlite:")


def trial_needs(cfg: Config, use_gpu: bool) -> list[Need]:
    """What one trial holds at once: its driver (train.driver_resource), its training workers and their Ray Data
    task (train.worker_needs)."""
    from sslscale.training import train  # here, not at the top: it imports Ray Train and DeepSpeed

    return [(driver_resource(cfg.train.driver_resource), 1), *train.worker_needs(cfg, cfg.train.workers, use_gpu)]


def concurrency(cfg: Config, requested: int, uri: str, nodes: list, use_gpu: bool = False) -> int:
    """Trials at once: as many as fit at the same time on `nodes` (runtime.capacities: the cluster's nodes and
    what its autoscaler may add), each with all of trial_needs, at most `requested` when that is set; 1 with an
    sqlite store (_one_writer). More trials than fit would start their drivers and worker groups and leave no CPU
    for their Ray Data tasks: a sweep that waits forever."""
    if _one_writer(requested, uri):
        return 1
    trial, most = trial_needs(cfg, use_gpu), 1
    while most < (requested or MAX_CONCURRENT) and fits(nodes, [(b, n * (most + 1)) for b, n in trial]):
        most += 1
    if requested > most:
        print(f"--max-concurrent {requested}: only {most} trial(s) of {describe_needs(trial)} fit at once on "
              f"{describe(nodes)}; running {most} at a time", flush=True)
    return most


def describe_needs(needs: list[Need]) -> str:
    """'1 x {'CPU': 0.25} + 2 x {'CPU': 1.0} + ...': what a trial holds, for a line."""
    return " + ".join(f"{n} x {b}" for b, n in needs)


# --- the trial ---------------------------------------------------------------------------------------------------

class _Report(TuneReportCallback):
    """Rank 0's reports to Tune, all but the last training step's: that one would reach ASHA at max_t (= train.steps)
    and end the trial before its transfer evaluation; the trial's own final report, with the score, stands for it."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def after_report(self, run_context, metrics, checkpoint):
        if metrics[0]["step"] < self.steps:
            super().after_report(run_context, metrics, checkpoint)


def trial(point: dict, setup: dict) -> None:
    """One Tune trial: `pretrain` on the base config with the point's values, as a child run of the sweep."""
    from sslscale.pretraining import pretrain

    cfg = spaces.apply(Config.from_dict(setup["config"]), point)
    trial_id = ray.tune.get_context().get_trial_id()
    uri, metric = cfg.tracking.uri, setup["metric"]
    # named by tracking.run_name: recipe, method, corpus and this trial's id, under the sweep's parent run
    cfg.tracking.parent_run_id, cfg.tracking.run_name = setup["parent"], ""
    prior = artifacts.children_by_trial(uri, setup["parent"]).get(trial_id)  # a restored or retried trial's
    if prior is not None and prior.info.status == "FINISHED" and metric in prior.data.metrics:
        run_id, scores = prior.info.run_id, {k: v for k, v in prior.data.metrics.items() if k.startswith("transfer/")}
    else:  # new, or continue its own child run from its latest checkpoint
        resume = prior.info.run_id if prior is not None and prior.data.tags.get("sslscale.run_dir") else None
        result = pretrain(cfg, resume=resume, tags={"sslscale.tune_trial_id": trial_id, "sslscale.sweep": setup["name"]},
                          callbacks=(_Report(cfg.train.steps),), report_extra={metric: math.nan})
        run_id, scores = result.run_id, {f"transfer/{k}": v for k, v in result.scores.items()}
    last = tracking.history(uri, run_id, SIGNAL)
    ray.tune.report({"step": cfg.train.steps, SIGNAL: last[-1][1] if last else math.nan, metric: math.nan, **scores})


class _Progress(ray.tune.Callback):
    """One line per trial event on the driver: started (with its values), health every ~30 s, ended."""

    def __init__(self, steps: int, metric: str, every: float = 30.0):
        self.steps, self.metric, self.every, self.last = steps, metric, every, {}

    def on_trial_start(self, iteration, trials, trial, **info):
        values = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config.items())
        print(f"trial {trial.trial_id} started ({len(trials)} so far): {values}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if time.time() - self.last.get(trial.trial_id, 0) >= self.every:
            self.last[trial.trial_id] = time.time()
            print(f"trial {trial.trial_id} step {result.get('step')}/{self.steps} "
                  f"{SIGNAL} {result.get(SIGNAL, math.nan):.2f}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        score = result.get(self.metric, math.nan)
        if math.isfinite(score):
            print(f"trial {trial.trial_id} finished: {self.metric} {score:.4f}", flush=True)
        else:
            print(f"trial {trial.trial_id} stopped by the scheduler at step {result.get('step')} "
                  f"({SIGNAL} {result.get(SIGNAL, math.nan):.2f})", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"trial {trial.trial_id} failed: see {trial.path}/error.txt", flush=True)


# --- the sweep ---------------------------------------------------------------------------------------------------

def _scheduler(state: dict):
    if state["scheduler"] == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(metric=state["signal"], mode="max", time_attr="step", max_t=state["steps"],
                         grace_period=state["grace_period"], reduction_factor=state["reduction_factor"])


class _Optuna(OptunaSearch):
    """Optuna's TPE sampler. A trial without a score (ASHA stopped it: its last result holds NaN) is told to Optuna
    as pruned; Ray's OptunaSearch told NaN as a value, which Optuna records as a failure, with a warning each."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if result and not math.isfinite(result.get(self.metric, math.nan)):
            result = {k: v for k, v in result.items() if k != self.metric}
        super().on_trial_complete(trial_id, result, error)


def _searcher(state: dict):
    points = [state["default_point"]] if state["default_point"] else None
    if state["search"] == "optuna":
        return _Optuna(metric=state["metric"], mode=state["mode"], points_to_evaluate=points, seed=state["seed"])
    # a SearchGenerator ignores TuneConfig.max_concurrent_trials: the limit goes to it directly
    return BasicVariantGenerator(points_to_evaluate=points, random_state=state["seed"],
                                 max_concurrent=state["max_concurrent"])


def _domains(space: dict) -> dict:
    make = {"choice": lambda d: ray.tune.choice(list(d.values)), "grid": lambda d: ray.tune.grid_search(list(d.values)),
            "uniform": lambda d: ray.tune.uniform(*d.values), "loguniform": lambda d: ray.tune.loguniform(*d.values),
            "randint": lambda d: ray.tune.randint(*d.values)}
    return {key: make[d.kind](d) for key, d in space.items()}


def _trainable(state: dict):
    setup = {k: state[k] for k in ("config", "parent", "metric", "name")}
    fn = ray.tune.with_parameters(trial, setup=setup)
    return ray.tune.with_resources(fn, ray.tune.PlacementGroupFactory([driver_resource(state["driver_resource"])]))


def _run_config(state: dict) -> ray.tune.RunConfig:
    return ray.tune.RunConfig(name=state["name"], storage_path=storage.parent(state["folder"]), verbose=0,
                              callbacks=[_Progress(state["steps"], state["metric"])],
                              failure_config=ray.tune.FailureConfig(max_failures=0))


def _grace(cfg: Config, rf: int) -> int:
    """ASHA's first rung, a multiple of train.health_every (a fresh health value lands on every rung): train.steps
    / rf^k exactly where that is one (k = 2, 3, 1), so the top rung is the last step and none falls just before
    it (300 steps give rungs 30, 90, 270: a trial stopped at 270 wasted its 270); else about train.steps / rf^2."""
    steps, every = cfg.train.steps, cfg.train.health_every
    for k in (2, 3, 1):
        if steps % rf ** k == 0 and (steps // rf ** k) % every == 0:
            return steps // rf ** k
    return min(steps, every * max(1, round(steps / rf ** 2 / every)))


def _check_options(cfg: Config, samples: int, scheduler: str, search: str, metric: str, mode: str,
                   max_concurrent: int) -> None:
    """One line on an option or base config a sweep cannot run with, before Ray starts."""
    allowed = metrics(cfg)
    checks = [("--samples", samples >= 1, "at least 1"), ("--scheduler", scheduler in ("asha", "fifo"), "asha or fifo"),
              ("--search", search in ("random", "optuna"), "random or optuna"),
              ("--mode", mode in ("max", "min"), "max or min"), ("--max-concurrent", max_concurrent >= 0, "0 or more"),
              ("--metric", not metric or metric in allowed,
               f"a score the trials log: {', '.join(allowed[:4])}{', ...' if len(allowed) > 4 else ''} (see "
               f"transfer.protocols and transfer.label_fractions)"),
              ("tracking.enabled", cfg.tracking.enabled, "true: a sweep is a parent run with a child per trial"),
              ("transfer.enabled", cfg.transfer.enabled, "true: trials are ranked by their transfer score")]
    for what, ok, allowed in checks:
        if not ok:
            raise SslscaleError(f"bad value for {what}: must be {allowed}")
    _one_writer(max_concurrent, tracking.resolve_uri(cfg.tracking.uri))


def _check_driver_resource(cfg: Config) -> None:
    name = next(iter(driver_resource(cfg.train.driver_resource)))
    offered = cluster_resources()
    if name not in offered:
        raise SslscaleError(f"train.driver_resource={cfg.train.driver_resource}: no node of this Ray cluster offers "
                            f"{name!r} (it has {', '.join(sorted(k for k in offered if '_group_' not in k))}); "
                            f"use CPU:0.25 or a resource your head nodes declare")


def _placed(cfg: Config, max_concurrent: int) -> int:
    """How many trials run at once; one line now where even one trial can never be placed on this cluster."""
    from sslscale.training.train import uses_gpu

    use_gpu = uses_gpu(cfg)
    trial = trial_needs(cfg, use_gpu)
    require(trial, f"a trial's driver, workers and data task ({describe_needs(trial)})", "train.workers")
    return concurrency(cfg, max_concurrent, cfg.tracking.uri, capacities(), use_gpu)


def sweep(cfg: Config, space_items: list[str], *, samples: int = 8, scheduler: str = "asha", search: str = "random",
          metric: str = "", mode: str = "max", max_concurrent: int = 0, name: str = "", recipe: str = "",
          retrain_overrides: list[str] = (), grace_period: int = 0, reduction_factor: int = 3,
          seed: int = 0, register: str = "") -> SweepResult:
    """Run a Tune sweep of `pretrain` over `space_items` (KEY=DIST strings, see space.py) on top of cfg;
    `retrain_overrides` are the user's fixed key=value overrides (kept in the command that retrains the winner);
    `register`: a model registry name the best trial's encoder is registered under at the end."""
    space_items = spaces.renamed(space_items, cfg)
    space = spaces.parse(space_items)
    _check_options(cfg, samples, scheduler, search, metric, mode, max_concurrent)
    _check_register(register)
    spaces.check(space, cfg, search, list(retrain_overrides))
    from sslscale.pretraining import preflight  # here, as in a trial: it imports Ray Train and DeepSpeed

    preflight(cfg)
    name = name or f"{recipe or cfg.recipe or cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = _folder(cfg.train.storage, name)
    if storage.exists(folder):
        raise SslscaleError(f"sweep {name!r} already exists in {folder}: continue it with --resume {name}, "
                            f"or pick another --name")
    cfg = _absolute(cfg)
    state = {"name": name, "folder": folder, "space": space_items, "samples": samples, "scheduler": scheduler,
             "search": search, "metric": metric or default_metric(cfg), "mode": mode, "signal": SIGNAL,
             "steps": cfg.train.steps, "health_every": cfg.train.health_every,
             "grace_period": grace_period or _grace(cfg, reduction_factor), "reduction_factor": reduction_factor,
             "seed": seed, "recipe": recipe or cfg.recipe, "retrain_overrides": list(retrain_overrides),
             "driver_resource": cfg.train.driver_resource, "register": register,
             "default_point": spaces.default_point(space, cfg),
             "config": cfg.to_dict()}
    ensure_ray(log_to_driver=False)
    _check_driver_resource(cfg)
    state["max_concurrent"] = _placed(cfg, max_concurrent)
    state["parent"] = artifacts.open_parent(cfg, state)
    storage.makedirs(folder)
    artifacts.write_state(state)
    print(f"sweep {name}: {samples} sample(s) of {len(space)} key(s), {scheduler} on {SIGNAL}, ranked by "
          f"{state['metric']}, {state['max_concurrent']} trial(s) at a time; parent run {state['parent']}, "
          f"folder {folder}", flush=True)
    if state["default_point"] is None:
        print("no trial is the recipe's default: the space has a grid, or the recipe's values lie outside it",
              flush=True)
    tune_config = ray.tune.TuneConfig(num_samples=samples, scheduler=_scheduler(state), search_alg=_searcher(state),
                                      # Optuna gets Tune's limiter; the random searcher took the limit itself
                                      max_concurrent_trials=state["max_concurrent"] if search == "optuna" else None,
                                      reuse_actors=_reuse(scheduler))
    return _fit(state, lambda: ray.tune.Tuner(_trainable(state), param_space=_domains(space),
                                              run_config=_run_config(state), tune_config=tune_config))


def _reuse(scheduler: str) -> bool:
    """Whether a trial starts in its predecessor's trial actor, its imports warm (~5 s less a trial here,
    docs/sweeps.md). Only without early stopping: Tune caches a stopped trial's actor for reuse while the trial's
    own thread still waits in Ray Train's fit, and its workers' next report then blocks for good (ASHA hung so)."""
    return scheduler == "fifo"


def _folder(root: str, name: str) -> str:
    """The sweep's own folder under <train.storage>/sweeps; one line on a name that would leave it."""
    if not re.fullmatch(r"[\w-][\w.-]*", name):
        raise SslscaleError(f"sweep name {name!r}: use letters, digits, '.', '_' and '-' only (not starting with '.')")
    return storage.join(storage.absolute(root), "sweeps", name)


def _check_register(register: str) -> None:
    if register and not re.fullmatch(r"[\w][\w .-]*", register):
        raise SslscaleError(f"--register {register!r}: name the registered model with letters, digits, spaces, "
                            "'.', '_' and '-'")


def register_best(state: dict, best_run_id: str) -> tuple[str, int]:
    """The best trial's logged encoder registered under the sweep's `register` name, printed; (name, version).
    One line when it cannot be (the sweep's results are saved already, and the line says how to retry)."""
    retry = f"retry with `sslscale sweep --resume {state['name']} --register {state['register']!r}`"
    if not best_run_id:
        raise SslscaleError(f"sweep {state['name']} has no finished trial with a run to register")
    try:
        name, version = tracking.register_model(state["config"]["tracking"]["uri"], best_run_id, state["register"])
    except Exception as e:  # noqa: BLE001 - the store away, a model not logged: the sweep itself is done
        raise SslscaleError(f"sweep {state['name']} finished, but registering its winner failed "
                            f"({reason(e)[:200]}): {retry}") from None
    print(f"registered the winner's encoder as {name!r} version {version}: models:/{name}/{version}", flush=True)
    return name, version


def resume(name: str, root: str | None = None, register: str = "") -> SweepResult:
    """Continue a sweep whose driver stopped: the same Tune experiment (Tuner.restore) and the same parent run.
    Tune's state is pickled, so it is read only from the sweep's own folder under <root>/sweeps/ (root: default
    train.storage). `register` names the registered model for the winner (a finished sweep's too)."""
    _check_register(register)
    folder = _folder(root or Config().train.storage, name)
    try:
        state = storage.read_json(storage.join(folder, artifacts.STATE))
    except (OSError, ValueError):
        raise SslscaleError(f"no sweep {name!r} in {storage.parent(folder)} (no readable {artifacts.STATE}); "
                            f"check the name and train.storage") from None
    state["register"] = register or state.get("register", "")
    if state.get("finished"):
        print(f"sweep {name} finished already (parent run {state['parent']}):\n{state['table']}", flush=True)
        if register:
            register_best(state, state["best_run_id"])
        return SweepResult(name, folder, state["parent"], [], None, state["best_run_id"], state["table"],
                           state["command"])
    if not ray.tune.Tuner.can_restore(folder):
        raise SslscaleError(f"sweep {name!r} has no Tune state in {folder} yet: start it again under a new --name")
    ensure_ray(log_to_driver=False)
    print(f"resuming sweep {name} (parent run {state['parent']}) from {folder}", flush=True)
    tracking.best_effort(tracking.set_tags, state["config"]["tracking"]["uri"], state["parent"],
                         {"sslscale.resumed": time.strftime("%Y-%m-%dT%H:%M:%S")})
    def restore():
        try:
            return ray.tune.Tuner.restore(folder, _trainable(state), resume_unfinished=True, resume_errored=False,
                                          param_space=_domains(spaces.parse(state["space"])))
        except ModuleNotFoundError as e:  # Tune's pickles name our modules by path; 0.1's layers moved them
            if not (e.name or "").startswith("sslscale"):
                raise
            raise SslscaleError(f"sweep {name!r} was saved by an sslscale whose module {e.name} has since moved: "
                                "its Tune state cannot be read; start it again under a new --name") from None

    return _fit(state, restore)


def _fit(state: dict, make_tuner) -> SweepResult:
    """Run the trials; the parent ends FAILED if Tune itself fails (a trial's failure is that trial's)."""
    try:
        grid = make_tuner().fit()
    except Exception:
        tracking.best_effort(tracking.end_run, state["config"]["tracking"]["uri"], state["parent"], "FAILED")
        raise
    return _finish(state, grid)


# --- after the trials ---------------------------------------------------------------------------------------------

def _record(result, state: dict, children: dict) -> dict:
    """A trial record (see report.py) from Tune's result and the trial's child run. Its health rows keep the
    last value per health step (a restored trial reports again from its checkpoint)."""
    metrics, keys = result.metrics or {}, [d.key for d in spaces.parse(state["space"]).values()]
    trial_id = metrics["trial_id"]
    frame, health = result.metrics_dataframe, {}
    if frame is not None and SIGNAL in frame:
        for row in frame.to_dict("records"):
            if row["step"] % state["health_every"] == 0 and math.isfinite(row[SIGNAL]):
                health[int(row["step"])] = {k: float(row[k]) for k in HEALTH_KEYS if k in row}
    score = float(metrics.get(state["metric"], math.nan))
    status = "finished" if math.isfinite(score) else "error" if result.error else "stopped"
    run = children.get(trial_id)
    return {"trial_id": trial_id, "run_id": run.info.run_id if run else "",
            "params": spaces.typed({k: v for k, v in (result.config or {}).items() if k in keys}),
            "status": status, "score": score, "signal": float(metrics.get(SIGNAL, math.nan)),
            "last_step": int(metrics.get("step", 0)), "health": health,
            "curve": [(s, h[SIGNAL]) for s, h in sorted(health.items())],
            "scores": {k: v for k, v in metrics.items() if k.startswith("transfer/") and math.isfinite(v)},
            "error": str(result.error).strip().splitlines()[-1][:300] if result.error else ""}


def _finish(state: dict, grid) -> SweepResult:
    """Rank the trials, close their child runs, log the table and plots to the parent; an interrupted sweep
    (Ctrl-C: Tune returns with trials still running) is left as it is, for --resume."""
    name, uri = state["name"], state["config"]["tracking"]["uri"]
    if grid.num_terminated + grid.num_errors < len(grid):
        raise SslscaleError(f"sweep {name} was interrupted with {len(grid) - grid.num_terminated - grid.num_errors} "
                            f"trial(s) unfinished; continue it with `sslscale sweep --resume {name}`")
    children = tracking.best_effort(artifacts.children_by_trial, uri, state["parent"]) or {}
    records = [_record(r, state, children) for r in grid]
    for rec in records:
        tracking.best_effort(artifacts.close_child, uri, rec, children.get(rec["trial_id"]))
    ranked = report.rank(records, state["mode"])
    keys = list(spaces.parse(state["space"]))
    table = report.markdown(ranked, keys, state["metric"], SIGNAL)
    best = ranked[0] if ranked and ranked[0]["status"] == "finished" else None
    command = report.retrain_command(state["recipe"], state["retrain_overrides"], best["params"]) if best else ""
    artifacts.log(state, Config.from_dict(state["config"]), ranked, table, best)
    state.update(finished=True, table=table, command=command, best_run_id=best["run_id"] if best else "")
    artifacts.write_state(state)
    print(f"\nsweep {name}: {len(records)} trial(s), ranked by {state['metric']}\n{table}", flush=True)
    for rec in ranked:
        if rec["error"]:
            print(f"trial {rec['trial_id']} failed: {rec['error']}", flush=True)
    if best is None:
        raise SslscaleError(f"no trial of sweep {name} finished with a score; see the table above and each trial's "
                            f"error.txt in {state['folder']}")
    print(f"retrain the winner at full length:\n  {command}", flush=True)
    if state["register"]:
        register_best(state, best["run_id"])
    return SweepResult(name, state["folder"], state["parent"], ranked,
                       spaces.apply(Config.from_dict(state["config"]), best["params"]), best["run_id"], table, command)
