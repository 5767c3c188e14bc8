"""Ray Train, in one place: the per-worker training loop and the TorchTrainer launch.

Each worker builds the method, wraps it with the DeepSpeed engine, restores the latest checkpoint if Ray hands
one (worker-group restart or `--resume`), then reads its dataset shard step by step. Every
`train.checkpoint_every` steps all workers save and `ray.train.report` the checkpoint; rank 0 then sends the
metrics the checkpoint covers to MLflow (see tracking.MetricBuffer). Rank 0 prints a progress line.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings

import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from sslscale import tracking
from sslscale.config import Config
from sslscale.engine import Engine
from sslscale.health import health_metrics
from sslscale.methods import build_method
from sslscale.progress import Progress


def _batches(shard, cfg: Config, rank: int):
    """Groups of grad_accum micro-batches from this worker's dataset shard."""
    it = shard.iter_torch_batches(batch_size=cfg.micro_batch(), drop_last=True,
                                  local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                                  local_shuffle_seed=cfg.data.seed * 1000 + rank if cfg.data.shuffle_buffer else None)
    group = []
    for batch in it:
        group.append(batch)
        if len(group) == cfg.engine.grad_accum:
            yield group
            group = []


def _record(position: dict, group: list[dict]) -> None:
    for batch in group:
        for epoch, sid in zip(batch["epoch"].tolist(), batch["id"].tolist()):
            position.setdefault(str(epoch), []).append(sid)


def _save(engine: Engine, cfg: Config, step: int, rank: int, position: dict, run_id: str, metrics: dict) -> None:
    folder = tempfile.mkdtemp(prefix=f"sslscale-ckpt-{step}-")
    try:
        state = {"step": step, "world_size": ray.train.get_context().get_world_size(), "run_id": run_id,
                 "config": cfg.to_dict()} if rank == 0 else None
        engine.save(folder, rank=rank, position=position, state=state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"checkpoint_{step:07d}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg, run_id, input_spec = Config.from_dict(loop_config["config"]), loop_config["run_id"], loop_config["input"]
    torch.set_num_threads(cfg.train.threads_per_worker)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.data.seed)  # the same initial weights on every worker
    engine = Engine(build_method(cfg, **input_spec), cfg)
    step, position = 0, {}
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as folder:
            step = engine.load(folder)["step"]
            from sslscale.checkpoint import read_positions

            position = {str(e): ids for e, ids in read_positions(folder).items()}
        if rank == 0:
            print(f"resuming from the checkpoint at step {step}", flush=True)
    buffer = tracking.MetricBuffer(loop_config["uri"], run_id) if rank == 0 and run_id else None
    progress = Progress(total=cfg.train.steps, start=step, enabled=rank == 0)
    shard = ray.train.get_dataset_shard("train")
    last = time.perf_counter()
    for group in _batches(shard, cfg, rank):
        if step >= cfg.train.steps:
            break
        step += 1
        out = engine.train_step(group)
        _record(position, group)
        now = time.perf_counter()
        metrics = {k: v for k, v in out.items() if k != "embeddings"}
        metrics.update(lr=engine.lr(), samples_per_s=cfg.data.batch_size / (now - last))
        last = now
        if step % cfg.train.health_every == 0:
            metrics.update(health_metrics(out["embeddings"]))
        if buffer:
            buffer.add(step, metrics)
        progress.update(step, metrics)
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            _save(engine, cfg, step, rank, position, run_id, {"step": step, "loss": metrics["loss"]})
            if buffer:
                buffer.flush(step)
            last = time.perf_counter()  # checkpoint time is not training throughput
    progress.done(step)


def fit(cfg: Config, *, datasets: dict, ingest, run_id: str, uri: str, input_spec: dict, storage: str, name: str,
        resume_from: str | None = None):
    """Launch the TorchTrainer; returns Ray's Result (its `.checkpoint` is the last one reported)."""
    use_gpu = cfg.train.use_gpu == "true" or (cfg.train.use_gpu == "auto" and torch.cuda.is_available())
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.to_dict(), "run_id": run_id, "uri": uri, "input": input_spec},
        scaling_config=ScalingConfig(num_workers=cfg.train.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints)),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(execution_options=ingest),
        resume_from_checkpoint=ray.train.Checkpoint(resume_from) if resume_from else None,
    )
    return trainer.fit()


def worker_env() -> dict:
    """Environment variables the workers need (bounded MLflow retries, quiet DeepSpeed)."""
    keys = [k for k in os.environ if k.startswith("MLFLOW_HTTP_REQUEST_")]
    return {k: os.environ[k] for k in keys}
