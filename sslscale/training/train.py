"""Ray Train, in one place: the per-worker training loop and the TorchTrainer launch.

Each worker builds the method, wraps it with the DeepSpeed engine, restores the latest checkpoint if Ray hands
one (worker-group restart or `--resume`), then reads its dataset shard step by step; the stream's first batch is
fetched on a thread while DeepSpeed initialises. Every `train.log_every` steps the step's scalars are averaged over
ranks in one all-reduce (other steps read nothing back but the non-finite guard's flag). Every
`train.checkpoint_every` steps the ids every rank consumed are gathered into rank 0's position (position.py), all
workers save and `ray.train.report` the checkpoint; rank 0 then sends the metrics the checkpoint covers to MLflow
(see tracking.MetricBuffer). Rank 0 prints a progress line and marks its start-up (timeline.py). On health steps
rank 0 also measures the embedding spectrum of the run's fixed probe set (spectrum.Spectrum).
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings

import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from sslscale import dist, storage
from sslscale.checks import resources
from sslscale.config import Config
from sslscale.data import corpus
from sslscale.data.position import Position
from sslscale.errors import SslscaleError, root_cause
from sslscale.methods import build_method
from sslscale.runtime import tracking
from sslscale.runtime.cluster import Need, cluster_resources, require
from sslscale.timeline import IMPORTED_AT, Marks
from sslscale.training import faults, lease
from sslscale.training.checkpoint import read_positions
from sslscale.training.engine import Engine
from sslscale.training.export import start_from
from sslscale.training.health import HEALTH_KEYS, health_metrics
from sslscale.training.progress import Progress
from sslscale.training.spectrum import Spectrum


def _batches(shard, cfg: Config, rank: int):
    """Groups of grad_accum micro-batches from this worker's dataset shard."""
    it = shard.iter_torch_batches(batch_size=cfg.micro_batch(), drop_last=True, device="cpu",
                                  local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                                  local_shuffle_seed=cfg.data.seed * 1000 + rank if cfg.data.shuffle_buffer else None)
    group = []
    for batch in it:
        group.append(batch)
        if len(group) == cfg.engine.grad_accum:
            yield group
            group = []


def _record(fresh: Position, group: list[dict]) -> int:
    """Add a step's (epoch, id) rows to what this rank consumed since the last checkpoint; returns how many."""
    for batch in group:
        fresh.record(batch["epoch"].cpu().numpy(), batch["id"].cpu().numpy())
    return sum(len(batch["id"]) for batch in group)


def _gather_position(position: Position | None, fresh: Position, rows: int) -> int:
    """Collective: every rank's `fresh` ids into rank 0's `position` (the run's, which only rank 0 keeps: each
    rank's own ids are broken at every block the split handed another rank, their union is whole shards plus the
    rows in flight). Returns the rows consumed a second time (0 unless the stream repeats itself)."""
    union = Position.from_array(dist.gather_rows(torch.from_numpy(fresh.to_array())).numpy(), fresh.samples)
    rows = int(dist.all_reduce_sum(torch.tensor([rows]))[0])
    if position is None:
        return 0
    repeated = rows - len(union) + position.overlap(union)
    position.merge(union)
    return repeated


def _save(engine: Engine, cfg: Config, step: int, rank: int, position: Position | None, run_id: str, buffer,
          report: dict, marks: dict, repeated: int) -> None:
    """All ranks: save into a local folder and report it with `report` (what Ray Train and a Tune sweep see).
    Rank 0's state carries the metrics not yet in MLflow, so a checkpoint that lands but whose metrics were never
    sent (a kill in between) still delivers them, its start-up marks (timeline.py) and the run's position."""
    folder = tempfile.mkdtemp(prefix=f"sslscale-ckpt-{step}-")
    try:
        state = {"step": step, "world_size": ray.train.get_context().get_world_size(), "run_id": run_id,
                 "config": cfg.to_dict(), "pending_metrics": buffer.pending if buffer else [],
                 "timeline": marks, "repeated_samples": repeated} if rank == 0 else None
        engine.save(folder, rank=rank, position=position, state=state)
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"checkpoint_{step:07d}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _restore(engine: Engine, loop_config: dict, rank: int, buffer) -> tuple[int, Position | None, int]:
    """(step, the run's position on rank 0 (None elsewhere), rows consumed twice so far) from Ray's checkpoint
    after a worker-group restart, or from --resume's folder."""
    samples = loop_config["samples"]
    restored = ray.train.get_checkpoint()
    if not (restored or loop_config.get("resume_from")):
        return 0, Position(samples) if rank == 0 else None, 0
    # either way a local folder: Ray downloads its own; --resume's may be on an object store (train.storage)
    with restored.as_directory() if restored else storage.local(loop_config["resume_from"]) as folder:
        state = engine.load(folder)
        position = read_positions(folder, samples) if rank == 0 else None
    if buffer:
        buffer.restore(state.get("pending_metrics", []))
        buffer.flush(state["step"])
    if rank == 0:
        print(f"resuming from the checkpoint at step {state['step']}", flush=True)
    return state["step"], position, state.get("repeated_samples", 0)


def _step_metrics(out: dict, cfg: Config, step: int, interval: dict, spectrum_part: dict) -> dict:
    """What a step logs: on a logged step its finite scalars (a skipped step's NaN loss is left out; `skipped`
    counts it) and `interval` (_Interval.tick); the health metrics on their steps, with `spectrum_part`
    (Spectrum.measure); `lr` with anything logged, since tracking.MetricBuffer learns from it which steps the store
    already holds."""
    metrics = {k: v for k, v in out.items() if k not in ("embeddings", "skipped", "lr") and math.isfinite(v)}
    metrics.update(interval)
    if step % cfg.train.health_every == 0 and not out["skipped"]:
        metrics.update(health_metrics(out["embeddings"]), **spectrum_part)
    return {**metrics, "lr": out["lr"]} if metrics else {}


class _Prefetch:
    """The stream's first group, fetched on a daemon thread: an error in the engine's start-up is raised at once
    instead of after the first batch (a thread pool would wait for it, or forever if the stream stalls)."""

    def __init__(self, groups):
        self.box: dict = {}
        self.thread = threading.Thread(target=self._fetch, args=(groups,), daemon=True)
        self.thread.start()

    def _fetch(self, groups) -> None:
        try:
            self.box["first"] = next(groups, None)
        except BaseException as e:  # noqa: BLE001 - raised in the training thread by result()
            self.box["error"] = e

    def result(self):
        self.thread.join()
        if "error" in self.box:
            raise self.box["error"]
        return self.box["first"]


class _Interval:
    """What happened between logged steps: training samples/s (leaving out the time checkpoints take) and the
    number of steps skipped."""

    def __init__(self, batch_size: int):
        self.batch_size, self.steps, self.skipped, self.seconds = batch_size, 0, 0, 0.0
        self.last = time.perf_counter()

    def tick(self, skipped: bool, log: bool) -> dict:
        """Count one step; on a logged step return {samples_per_s, skipped} since the last one and start again."""
        now = time.perf_counter()
        self.steps, self.skipped, self.seconds = self.steps + 1, self.skipped + skipped, self.seconds + now - self.last
        self.last = now
        if not log:
            return {}
        out = {"samples_per_s": self.batch_size * self.steps / self.seconds, "skipped": float(self.skipped)}
        self.steps, self.skipped, self.seconds = 0, 0, 0.0
        return out

    def pause(self) -> None:
        self.last = time.perf_counter()


def _check_bad_steps(in_row: int, cfg: Config, step: int, last_saved: int) -> None:
    if in_row >= cfg.train.max_bad_steps:
        where = (f"the checkpoint of step {last_saved} is intact: --resume it with a lower optim.lr (or check the "
                 f"data)") if last_saved else "no checkpoint was written yet: start again with a lower optim.lr"
        raise SslscaleError(f"{in_row} steps in a row (up to step {step}) had a non-finite loss or gradient and "
                            f"were skipped; {where}")


def _tokenizer(where: dict | None) -> bytes | None:
    """The corpus's tokenizer.json, which a text field names, for the exported encoder; None without one."""
    return corpus.tokenizer_bytes(where["corpus"]) if where else None


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    marks = Marks(imported=IMPORTED_AT)
    marks.mark("loop")
    cfg, run_id, inputs = Config.from_dict(loop_config["config"]), loop_config["run_id"], loop_config["input"]
    lease.watch(loop_config["lease"])  # exit, writing nothing more, once the driver died or stopped the run
    rank = worker_setup(cfg)
    groups = _batches(ray.train.get_dataset_shard("train"), cfg, rank)
    first = _Prefetch(groups)  # Ray Data starts and makes views while DeepSpeed initialises
    torch.manual_seed(cfg.data.seed)  # the same initial weights on every worker
    start = None  # model.init: the same start on every worker, unless a checkpoint's weights come in _restore
    if cfg.model.init and not (ray.train.get_checkpoint() or loop_config.get("resume_from")):
        start = functools.partial(start_from, path=cfg.model.init, tokenizer=_tokenizer(loop_config.get("probe")))
    engine = Engine(build_method(cfg, inputs, start=start), cfg)
    buffer = tracking.MetricBuffer(loop_config["uri"], run_id) if rank == 0 and run_id else None
    step, position, repeated = _restore(engine, loop_config, rank, buffer)
    spectrum_probe = Spectrum(cfg, loop_config.get("probe"), rank, engine.method.encoder.modality)
    engine.tokenizer = _tokenizer(loop_config.get("probe")) if rank == 0 else None
    marks.mark("engine")
    first = first.result()
    fresh, rows = Position(loop_config["samples"]), 0  # what this rank consumed since the last checkpoint
    progress = Progress(total=cfg.train.steps, start=step, enabled=rank == 0)
    last_saved, bad_in_row, interval, shown = step, 0, _Interval(cfg.data.batch_size), {}
    # what every report carries (Tune checks its metrics in each one): the last health values, NaN until measured
    signal = {**dict.fromkeys(HEALTH_KEYS, math.nan), **loop_config["report_extra"]}
    groups = itertools.chain([first] if first else [], groups)
    # never ask the stream for more than the run needs: with a short run-ahead, Ray's equal split holds back a
    # rank's extra request until the other ranks take theirs, which they never do after their last step
    while step < cfg.train.steps and (group := next(groups, None)) is not None:
        marks.mark("first_batch")
        step += 1
        if faults.hit("slow_step", step, rank, loop_config["faults"]):
            time.sleep(faults.SLOW_STEP_S)
        log = step % cfg.train.log_every == 0 or step == cfg.train.steps
        out = engine.train_step(group, inject_nan=faults.hit("nan_loss", step, rank, loop_config["faults"]), log=log)
        rows += _record(fresh, group)  # a skipped step still consumed its samples
        marks.mark("first_step")
        marks["last_step"] = time.time()
        bad_in_row = bad_in_row + 1 if out["skipped"] else 0
        _check_bad_steps(bad_in_row, cfg, step, last_saved)
        metrics = _step_metrics(out, cfg, step, interval.tick(out["skipped"], log),
                                spectrum_probe.measure(engine, step, out["skipped"]))
        if buffer and metrics:
            buffer.add(step, metrics)
        shown.update(metrics)
        progress.update(step, shown)
        signal.update({k: metrics[k] for k in HEALTH_KEYS if k in metrics}, step=step)
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            repeated += _gather_position(position, fresh, rows)
            fresh, rows = Position(loop_config["samples"]), 0
            _save(engine, cfg, step, rank, position, run_id, buffer, dict(signal), marks, repeated)
            last_saved = step
            if buffer:
                buffer.flush(step, force=step == cfg.train.steps)
            interval.pause()  # checkpoint time is not training throughput
        elif step % cfg.train.health_every == 0 and loop_config["report_health"]:  # a sweep's scheduler sees it
            ray.train.report(dict(signal))  # every rank (a barrier); a copy: Ray may send it after `signal` changed
    progress.done(step)
    if step < cfg.train.steps:
        raise SslscaleError(f"the data stream ended at step {step} of {cfg.train.steps}: too much of the corpus was "
                            f"left out as bad (see skipped.json in the run folder); repair the corpus")


def uses_gpu(cfg: Config) -> bool:
    """train.use_gpu=auto means GPUs when the cluster has any, decided from Ray's view of the whole cluster: the
    driver may run on a CPU-only head node while the GPUs are on worker nodes. GPU nodes an autoscaler has not
    started yet do not count: such a cluster says train.use_gpu=true."""
    return cfg.train.use_gpu == "true" or (cfg.train.use_gpu == "auto" and cluster_resources().get("GPU", 0) > 0)


def worker_bundle(cfg: Config, use_gpu: bool) -> dict[str, float]:
    """What one Ray Train worker of cfg.train's size asks for."""
    return {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1.0} if use_gpu else {}),
            **resources(cfg.train.worker_resources)}


def worker_needs(cfg: Config, workers: int, use_gpu: bool) -> list[Need]:
    """`workers` Ray Train workers and the one Ray Data task that feeds them, which must all run at once: the
    stream's task needs CPUs that no worker holds."""
    return [(worker_bundle(cfg, use_gpu), workers), ({"CPU": cfg.data.task_cpus}, 1)]


def _scaling(cfg: Config, workers: int, key: str) -> tuple[Config, ScalingConfig]:
    """(cfg with train.use_gpu decided, so the workers' engines follow the driver; Ray Train's ScalingConfig for
    `workers` workers of cfg.train's size). Checked first against the cluster (worker_needs), as Ray would wait
    forever: one line saying what is missing and the ways out (`key` sets the workers' number). A run that fits
    only once an autoscaler adds nodes says so and goes on."""
    use_gpu = uses_gpu(cfg)
    bundle = worker_bundle(cfg, use_gpu)
    require(worker_needs(cfg, workers, use_gpu),
            f"{key}={workers} training workers of {bundle} each and a Ray Data task of {{'CPU': {cfg.data.task_cpus}}}",
            key)
    cfg = Config.from_dict(cfg.to_dict())
    cfg.train.use_gpu = str(use_gpu).lower()
    return cfg, ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                              resources_per_worker={k: v for k, v in bundle.items() if k != "GPU"})


def fit(cfg: Config, *, datasets: dict, ingest, run_id: str, uri: str, inputs: dict, storage: str, name: str,
        samples: int, resume_from: str | None = None, callbacks: tuple = (), report_extra: dict | None = None,
        lease_info: dict | None = None, corpus_dir: str = ""):
    """Launch the TorchTrainer; returns Ray's Result (its `.checkpoint` is the last one reported). `callbacks` go to
    the trainer's RunConfig (a sweep's TuneReportCallback), and then workers also report on health steps, not only
    at checkpoints; `report_extra` is added to every report (the keys a Tune searcher checks, NaN until the end);
    the workers watch the run's lease `lease_info` (lease.watch); `samples` is the size of the split the stream
    reads (the ids it holds are 0..samples-1); `corpus_dir` (the prepared corpus it reads) holds the probe set
    of the embedding spectrum, which is off without it."""
    cfg, scaling = _scaling(cfg, cfg.train.workers, "train.workers")
    trainer = TorchTrainer(
        train_loop,
        # Ray Train V2 has no resume_from_checkpoint: the folder travels in the loop config (a path on the
        # storage every worker reads), and get_checkpoint() covers restarts within this fit.
        train_loop_config={"config": cfg.to_dict(), "run_id": run_id, "uri": uri, "input": inputs,
                           "resume_from": resume_from, "faults": faults.spec(), "report_extra": report_extra or {},
                           "report_health": bool(callbacks), "lease": lease_info or {}, "samples": samples,
                           "probe": {"corpus": corpus_dir, "split": cfg.data.split} if corpus_dir else None},
        scaling_config=scaling,
        run_config=RunConfig(name=name, storage_path=storage, callbacks=list(callbacks),
                             logging_config=LoggingConfig(log_level="WARNING"),  # not a line per report/checkpoint
                             # retries happen in pretraining._train, which can rebuild the stream past what was consumed
                             failure_config=FailureConfig(max_failures=0),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints)),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(execution_options=ingest),
    )
    # Ray Train's SIGINT handler aborts the workers, then sys.exit()s with nothing said, and stays installed after
    # fit; pretraining handles SIGINT and SIGTERM itself (the run ends KILLED, with a line on how to resume)
    trainer._register_sigint_handler = lambda controller: None
    return trainer.fit()


def check_workers(cfg: Config, workers: int, key: str) -> None:
    """One line now, not at the end of a run, when `workers` Ray Train workers of cfg.train's size can never be
    placed on this cluster (`key` sets their number)."""
    _scaling(cfg, workers, key)


def run_workers(loop, loop_config: dict, cfg: Config, *, workers: int, key: str, datasets: dict, ingest,
                name: str) -> dict:
    """Run `loop(loop_config)` once (no retries) on `workers` Ray Train workers of cfg.train's size (`key` names the
    setting that asked for them); loop_config["config"] is cfg with train.use_gpu decided. Returns the metrics of
    the last `report_result` (rank 0's). Ray Train's files go to a folder under train.storage (shared by every
    node on a cluster) that is removed afterwards. A failure is one line: the workers' own error when it is ours."""
    cfg, scaling = _scaling(cfg, workers, key)
    folder = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    trainer = TorchTrainer(loop, train_loop_config={**loop_config, "config": cfg.to_dict()}, scaling_config=scaling,
                           run_config=RunConfig(name=folder, storage_path=storage.absolute(cfg.train.storage),
                                                logging_config=LoggingConfig(log_level="WARNING"),
                                                failure_config=FailureConfig(max_failures=0)),
                           datasets=datasets, dataset_config=ray.train.DataConfig(execution_options=ingest))
    trainer._register_sigint_handler = lambda controller: None  # as in fit: the caller handles SIGINT
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps the workers' errors
        raise SslscaleError(f"{name} on {workers} Ray Train workers failed: {root_cause(e)[0]}") from e
    finally:
        storage.remove_tree(storage.join(storage.absolute(cfg.train.storage), folder))
    return dict(result.metrics or {})


def worker_setup(cfg: Config) -> int:
    """In a Ray Train worker (train_loop's, run_workers'): its threads and quiet logs; returns its rank."""
    torch.set_num_threads(cfg.train.threads_per_worker)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    # Ray Train's INFO lines (a report, a checkpoint written) would reach the console several times a run. Its
    # LoggingConfig(log_level=...) quiets the controller only: in a worker, "ray.train" logs on its own handlers and
    # the report line goes through a logger named by a file path, i.e. to the root logger, which Train sets to INFO
    for name in ("ray.train", ""):
        logging.getLogger(name).setLevel(logging.WARNING)
    return ray.train.get_context().get_world_rank()


def worker_batches(name: str, batch_size: int):
    """In a worker of run_workers: its share of dataset `name` as torch batches of batch_size rows; each call
    reads the dataset once more (all workers together)."""
    return ray.train.get_dataset_shard(name).iter_torch_batches(batch_size=batch_size, drop_last=True, device="cpu")


def report_result(metrics: dict, rank: int) -> None:
    """In a worker of run_workers: every rank reports, rank 0 with `metrics` in a small checkpoint (Ray Train V2
    hands back only what a checkpoint carries)."""
    if rank:
        ray.train.report({})
        return
    folder = tempfile.mkdtemp(prefix="sslscale-result-")
    try:
        with open(os.path.join(folder, "result.json"), "w") as f:
            f.write(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
