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

import json
import math
import os
import re
import time
from dataclasses import dataclass

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from sslscale import corpus, space as spaces, sweep_report, tracking
from sslscale.config import Config, driver_resource, validate
from sslscale.errors import SslscaleError
from sslscale.runtime import cluster_cpus, ensure_ray

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter honours verbose=0; _Progress prints instead
SIGNAL = "health/rankme"  # ASHA's default metric: label-free, cheap, reported on every health step
STATE = "sweep.json"  # our part of the sweep folder: what resume needs (Tune's own state sits beside it)


@dataclass
class SweepResult:
    name: str
    folder: str
    parent_run_id: str
    trials: list  # ranked trial records (see sweep_report)
    best_config: Config | None
    best_run_id: str
    table: str  # markdown
    command: str  # retrains the winner at full length


def _absolute(cfg: Config) -> Config:
    """Paths made absolute before any trial starts (Tune changes each trial's working directory)."""
    cfg = Config.from_dict(cfg.to_dict())
    cfg.data.corpus = corpus.resolve(cfg.data.corpus)
    cfg.transfer.target = corpus.resolve(cfg.transfer.target) if cfg.transfer.enabled else cfg.transfer.target
    cfg.train.output_dir = os.path.abspath(cfg.train.output_dir)
    cfg.tracking.uri = tracking.resolve_uri(cfg.tracking.uri)
    return cfg


def default_metric(cfg: Config, protocol: str = "knn") -> str:
    return f"transfer/{os.path.basename(cfg.transfer.target.rstrip('/'))}/{protocol}_top1"


def concurrency(cfg: Config, requested: int, uri: str, total_cpus: float) -> int:
    """Trials at once: floor(cluster CPUs / (driver + workers x cpus_per_worker + data.cpus)) unless requested;
    1 with an sqlite store (other nodes cannot reach the file, concurrent writers lock it)."""
    if uri.startswith("sqlite:"):
        if requested > 1:
            raise SslscaleError(f"--max-concurrent {requested} needs an MLflow server (tracking.uri=http://...): "
                                f"trials cannot share the sqlite store {uri}")
        return 1
    if requested:
        return requested
    per_trial = (driver_resource(cfg.train.driver_resource).get("CPU", 0.0)
                 + cfg.train.workers * cfg.train.cpus_per_worker + cfg.data.cpus)
    return max(1, int(total_cpus // per_trial))


# --- the trial ---------------------------------------------------------------------------------------------------

def _child(uri: str, parent: str, trial_id: str):
    """This trial's child run from an earlier attempt (a restored or retried trial), or None."""
    runs = [r for r in tracking.child_runs(uri, parent) if r.data.tags.get("sslscale.tune_trial_id") == trial_id]
    return runs[-1] if runs else None


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
    cfg.tracking.parent_run_id, cfg.tracking.run_name = setup["parent"], f"{setup['name']}/{trial_id}"
    prior = _child(uri, setup["parent"], trial_id)
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

    @staticmethod
    def _name(trial) -> str:
        return trial.trial_id

    def on_trial_start(self, iteration, trials, trial, **info):
        values = " ".join(spaces.as_overrides(trial.config))
        print(f"trial {self._name(trial)} started ({len(trials)} so far): {values}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if time.time() - self.last.get(trial.trial_id, 0) >= self.every:
            self.last[trial.trial_id] = time.time()
            print(f"trial {self._name(trial)} step {result.get('step')}/{self.steps} "
                  f"{SIGNAL} {result.get(SIGNAL, math.nan):.2f}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        score = result.get(self.metric, math.nan)
        if math.isfinite(score):
            print(f"trial {self._name(trial)} finished: {self.metric} {score:.4f}", flush=True)
        else:
            print(f"trial {self._name(trial)} stopped by the scheduler at step {result.get('step')} "
                  f"({SIGNAL} {result.get(SIGNAL, math.nan):.2f})", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"trial {self._name(trial)} failed: see {trial.local_path or 'its folder'}/error.txt", flush=True)


# --- the sweep ---------------------------------------------------------------------------------------------------

def _scheduler(state: dict):
    if state["scheduler"] == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(metric=state["signal"], mode="max", time_attr="step", max_t=state["steps"],
                         grace_period=state["grace_period"], reduction_factor=state["reduction_factor"])


def _searcher(state: dict, space: dict):
    points = [state["default_point"]] if state["default_point"] else None
    if state["search"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=state["metric"], mode=state["mode"], points_to_evaluate=points,
                            seed=state["seed"])
    # a SearchGenerator ignores TuneConfig.max_concurrent_trials: the limit goes to it directly
    return BasicVariantGenerator(points_to_evaluate=points, random_state=state["seed"],
                                 max_concurrent=state["max_concurrent"])


def _tune_limit(state: dict) -> int | None:
    """TuneConfig.max_concurrent_trials: Optuna gets Tune's limiter; the random searcher takes it itself."""
    return state["max_concurrent"] if state["search"] == "optuna" else None


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
    return ray.tune.RunConfig(name=state["name"], storage_path=os.path.dirname(state["folder"]), verbose=0,
                              callbacks=[_Progress(state["steps"], state["metric"])],
                              failure_config=ray.tune.FailureConfig(max_failures=0))


def _grace(cfg: Config, rf: int) -> int:
    """ASHA's first rung: about train.steps / rf^2, a multiple of train.health_every (a report with a fresh
    health value lands on every rung)."""
    every = cfg.train.health_every
    return min(cfg.train.steps, every * max(1, round(cfg.train.steps / rf ** 2 / every)))


def sweep(cfg: Config, space_items: list[str], *, samples: int = 8, scheduler: str = "asha", search: str = "random",
          metric: str = "", mode: str = "max", max_concurrent: int = 0, name: str = "", recipe: str = "",
          retrain_overrides: list[str] = (), grace_period: int = 0, reduction_factor: int = 3,
          seed: int = 0) -> SweepResult:
    """Run a Tune sweep of `pretrain` over `space_items` (KEY=DIST strings, see space.py) on top of cfg."""
    space = spaces.parse(space_items)
    _check_options(cfg, samples, scheduler, search, mode, reduction_factor)
    concurrency(cfg, max_concurrent, tracking.resolve_uri(cfg.tracking.uri), 1)  # an sqlite store refuses > 1 now
    spaces.check(space, cfg, search)
    validate(cfg)
    cfg = _absolute(cfg)
    name = name or f"{recipe or cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[\w.-]+", name):
        raise SslscaleError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    folder = os.path.join(cfg.train.output_dir, "sweeps", name)
    if os.path.exists(folder):
        raise SslscaleError(f"sweep {name!r} already exists in {folder}: continue it with --resume {name}, "
                            f"or pick another --name")
    state = {"name": name, "folder": folder, "space": space_items, "samples": samples, "scheduler": scheduler,
             "search": search, "metric": metric or default_metric(cfg), "mode": mode, "signal": SIGNAL,
             "steps": cfg.train.steps, "grace_period": grace_period or _grace(cfg, reduction_factor),
             "reduction_factor": reduction_factor, "seed": seed, "recipe": recipe,
             "retrain_overrides": list(retrain_overrides), "driver_resource": cfg.train.driver_resource,
             "default_point": spaces.default_point(space, cfg), "config": cfg.to_dict()}
    ensure_ray(env_vars=_worker_env(), log_to_driver=False)
    state["max_concurrent"] = concurrency(cfg, max_concurrent, cfg.tracking.uri, cluster_cpus())
    state["parent"] = _open_parent(cfg, state)
    os.makedirs(folder)
    _write_state(state)
    print(f"sweep {name}: {samples} sample(s) of {len(space)} key(s), {scheduler} on {SIGNAL}, ranked by "
          f"{state['metric']}, {state['max_concurrent']} trial(s) at a time; parent run {state['parent']}, "
          f"folder {folder}", flush=True)
    if state["default_point"] is None:
        print("no trial is the recipe's default: the space has a grid, or the recipe's values lie outside it",
              flush=True)
    tuner = ray.tune.Tuner(_trainable(state), param_space=_domains(space), run_config=_run_config(state),
                           tune_config=ray.tune.TuneConfig(num_samples=samples, scheduler=_scheduler(state),
                                                           search_alg=_searcher(state, space),
                                                           max_concurrent_trials=_tune_limit(state)))
    return _finish(state, tuner.fit())


def _check_options(cfg: Config, samples: int, scheduler: str, search: str, mode: str, rf: int) -> None:
    checks = [("--samples", samples >= 1, "at least 1"), ("--scheduler", scheduler in ("asha", "fifo"), "asha or fifo"),
              ("--search", search in ("random", "optuna"), "random or optuna"), ("--mode", mode in ("max", "min"),
              "max or min"), ("--reduction-factor", rf >= 2, "2 or more"),
              ("tracking.enabled", cfg.tracking.enabled, "true: a sweep is a parent run with a child per trial")]
    for what, ok, allowed in checks:
        if not ok:
            raise SslscaleError(f"bad value for {what}: must be {allowed}")


def _worker_env() -> dict:
    from sslscale.train import worker_env

    return worker_env()


def _open_parent(cfg: Config, state: dict) -> str:
    parent_cfg = Config.from_dict(cfg.to_dict())
    parent_cfg.tracking.run_name = state["name"]
    run_id = tracking.start_run(cfg.tracking.uri, parent_cfg, {"sslscale.sweep": state["name"],
                                                               "sslscale.sweep_folder": state["folder"]})
    params = {f"sweep.space.{item.partition('=')[0]}": item.partition("=")[2] for item in state["space"]}
    params.update({f"sweep.{k}": state[k] for k in ("samples", "scheduler", "search", "metric", "mode", "signal",
                                                   "grace_period", "reduction_factor", "max_concurrent", "seed")})
    tracking.log_params(cfg.tracking.uri, run_id, params)
    return run_id


def _write_state(state: dict) -> None:
    from sslscale.checkpoint import write_json

    write_json(os.path.join(state["folder"], STATE), state, indent=2)


def resume(name: str, output_dir: str = "runs") -> SweepResult:
    """Continue a sweep whose driver stopped: the same Tune experiment (Tuner.restore) and the same parent run.
    Tune's state is pickled, so it is read only from the sweep's own folder under output_dir/sweeps/."""
    folder = os.path.join(os.path.abspath(output_dir), "sweeps", name)
    try:
        with open(os.path.join(folder, STATE)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        raise SslscaleError(f"no sweep {name!r} in {os.path.dirname(folder)} (no readable {STATE}); check --name "
                            f"and train.output_dir") from None
    if not ray.tune.Tuner.can_restore(folder):
        raise SslscaleError(f"sweep {name!r} has no Tune state in {folder} yet: start it again under a new --name")
    ensure_ray(env_vars=_worker_env(), log_to_driver=False)
    print(f"resuming sweep {name} (parent run {state['parent']}) from {folder}", flush=True)
    tracking.best_effort(tracking.set_tags, state["config"]["tracking"]["uri"], state["parent"],
                         {"sslscale.resumed": time.strftime("%Y-%m-%dT%H:%M:%S")})
    tuner = ray.tune.Tuner.restore(folder, _trainable(state), resume_unfinished=True, resume_errored=False,
                                   param_space=_domains(spaces.parse(state["space"])))
    return _finish(state, tuner.fit())


# --- after the trials ---------------------------------------------------------------------------------------------

def _record(result, state: dict, children: dict) -> dict:
    """A trial record (see sweep_report) from Tune's result and the trial's child run."""
    metrics = result.metrics or {}
    trial_id = metrics.get("trial_id") or os.path.basename(result.path)
    frame = result.metrics_dataframe
    curve = []
    if frame is not None and SIGNAL in frame:
        curve = [(int(s), float(v)) for s, v in zip(frame["step"], frame[SIGNAL]) if math.isfinite(v)]
    score = float(metrics.get(state["metric"], math.nan))
    status = "finished" if math.isfinite(score) else "error" if result.error else "stopped"
    run = children.get(trial_id)
    return {"trial_id": trial_id, "run_id": run.info.run_id if run else "", "params": dict(result.config or {}),
            "status": status, "score": score, "signal": float(metrics.get(SIGNAL, math.nan)),
            "last_step": int(metrics.get("step", 0)), "curve": curve,
            "scores": {k: v for k, v in metrics.items() if k.startswith("transfer/") and math.isfinite(v)},
            "error": str(result.error).strip().splitlines()[-1][:300] if result.error else ""}


def _close_child(uri: str, record: dict, run) -> None:
    """A trial the scheduler stopped ends KILLED with the health it last reported (its training was cut between
    checkpoints, and `pretrain` saw that as a failed run); a trial that died without closing its run ends FAILED."""
    if run is None or record["status"] == "finished":
        return
    if record["status"] == "stopped" and run.info.status in ("RUNNING", "FAILED"):
        logged = max([s for s, _ in tracking.history(uri, record["run_id"], SIGNAL)], default=0)
        for step, value in record["curve"]:
            if step > logged:
                tracking.log_metrics(uri, record["run_id"], {SIGNAL: value}, step=step)
        tracking.set_tags(uri, record["run_id"], {"sslscale.stopped_by": "scheduler"})
        tracking.end_run(uri, record["run_id"], "KILLED")
    elif run.info.status == "RUNNING":
        tracking.end_run(uri, record["run_id"], "FAILED")


def _finish(state: dict, grid) -> SweepResult:
    cfg, uri = Config.from_dict(state["config"]), state["config"]["tracking"]["uri"]
    children = {r.data.tags.get("sslscale.tune_trial_id"): r for r in tracking.child_runs(uri, state["parent"])}
    records = [_record(r, state, children) for r in grid]
    for rec in records:
        tracking.best_effort(_close_child, uri, rec, children.get(rec["trial_id"]))
    ranked = sweep_report.rank(records, state["mode"])
    keys = [item.partition("=")[0] for item in state["space"]]
    table = sweep_report.markdown(ranked, keys, state["metric"], SIGNAL)
    best = ranked[0] if ranked and ranked[0]["status"] == "finished" else None
    command = sweep_report.retrain_command(state["recipe"], state["retrain_overrides"], best["params"] if best else {})
    from sslscale import sweep_artifacts  # matplotlib and the encoder: only once the trials are done

    sweep_artifacts.log(state, cfg, ranked, keys, table, best)
    tracking.best_effort(tracking.end_run, uri, state["parent"], "FINISHED" if best else "FAILED")
    print(f"\nsweep {state['name']}: {len(records)} trial(s), ranked by {state['metric']}\n{table}")
    print(f"retrain the winner at full length:\n  {command}" if best else "no trial finished with a score")
    return SweepResult(state["name"], state["folder"], state["parent"], ranked,
                       spaces.apply(cfg, best["params"]) if best else None, best["run_id"] if best else "",
                       table, command)
