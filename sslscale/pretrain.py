"""Pretraining as a plain function: `pretrain(config) -> PretrainResult` (run id, checkpoint, encoder, scores).

The driver's side of a run: validate the config, check the corpus, open (or reopen) the MLflow run, start the
Ray Train workers on the view stream, then export the encoder, log the artifacts and score the transfer target.
The CLI, a Tune trial, a test and a notebook all call this. A run's files live in <train.output_dir>/<run id>/:
run.json (what --resume needs), attempt-N/ (Ray Train's checkpoints per driver attempt), encoder.safetensors.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

from sslscale import checkpoint, corpus, stream, tracking, train, transfer
from sslscale.config import Config, validate
from sslscale.errors import SslscaleError
from sslscale.export import load_encoder
from sslscale.runtime import ensure_ray

RUN_FILE = "run.json"


@dataclass
class PretrainResult:
    run_id: str
    run_dir: str
    checkpoint: str
    encoder_path: str
    tracking_uri: str
    scores: dict = field(default_factory=dict)


def _input_spec(corpus_dir: str, split: str) -> dict:
    corpus.verify_shards(corpus_dir, split)
    h, w, c = corpus.load_manifest(corpus_dir)["fields"]["image"]["shape"]
    if h != w:
        raise SslscaleError(f"corpus {corpus_dir} has {h}x{w} images; encoders take square images: re-prepare it")
    return {"in_channels": c, "image_size": h}


def find_run_dir(resume: str, uri: str) -> str:
    """A run folder from a run id (its MLflow tag, or <output_dir>/<id>) or a folder holding run.json."""
    if os.path.isfile(os.path.join(resume, RUN_FILE)):
        return os.path.abspath(resume)
    if os.path.isdir(resume):
        raise SslscaleError(f"{resume} holds no {RUN_FILE}: pass a run id or the run's folder under train.output_dir")
    run = tracking.get_run(uri, resume)
    run_dir = run.data.tags.get("sslscale.run_dir", "")
    if not os.path.isfile(os.path.join(run_dir, RUN_FILE)):
        raise SslscaleError(f"run {resume} has no run folder at {run_dir!r}: it was moved or deleted")
    return run_dir


def resume_config(resume: str, overrides: list[str], uri: str = "") -> Config:
    """The resumed run's own config with `overrides` applied (e.g. more train.steps)."""
    run_dir = find_run_dir(resume, tracking.resolve_uri(uri))
    with open(os.path.join(run_dir, RUN_FILE)) as f:
        saved = json.load(f)
    return Config.from_dict(saved["config"]).override(overrides)


def _open_run(cfg: Config, uri: str, resume: str | None) -> tuple[str, str]:
    """(run id, run dir): a new run, or the resumed one."""
    if resume:
        run_dir = find_run_dir(resume, uri)
        with open(os.path.join(run_dir, RUN_FILE)) as f:
            run_id = json.load(f)["run_id"]
        if run_id:
            tracking.set_tags(uri, run_id, {"sslscale.resumed": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return run_id, run_dir
    run_id = tracking.start_run(uri, cfg) if cfg.tracking.enabled else ""
    run_dir = os.path.join(os.path.abspath(cfg.train.output_dir), run_id or time.strftime("run-%Y%m%d-%H%M%S"))
    os.makedirs(run_dir, exist_ok=True)
    tracking.dump_json(os.path.join(run_dir, RUN_FILE), {"run_id": run_id, "uri": uri, "config": cfg.to_dict()})
    if run_id:
        tracking.set_tags(uri, run_id, {"sslscale.run_dir": run_dir})
    return run_id, run_dir


def _train(cfg: Config, run_id: str, uri: str, run_dir: str, corpus_dir: str, input_spec: dict) -> str:
    """Run the workers from the run's latest checkpoint (if any); returns the final checkpoint folder."""
    ensure_ray(env_vars=train.worker_env())
    stream.quiet()
    last = checkpoint.latest(run_dir)
    consumed = checkpoint.read_positions(last) if last else {}
    if last and checkpoint.read_state(last)["step"] >= cfg.train.steps:
        return last
    dataset = stream.pretrain_dataset(cfg, corpus_dir, consumed=consumed)
    attempt = len([d for d in os.listdir(run_dir) if d.startswith("attempt-")])
    try:
        train.fit(cfg, datasets={"train": dataset}, ingest=stream.ingest_options(cfg), run_id=run_id, uri=uri, input_spec=input_spec,
                  storage=run_dir, name=f"attempt-{attempt}", resume_from=last)
    except Exception as e:  # noqa: BLE001 - Ray wraps worker errors; the user needs the root cause in one line
        if run_id:
            tracking.end_run(uri, run_id, "FAILED")
        raise SslscaleError(f"training failed: {_root_cause(e)}") from e
    final = checkpoint.latest(run_dir)
    if final is None:
        raise SslscaleError(f"training ended without a checkpoint in {run_dir}; see the worker log above")
    return final


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    msg = next((line for line in reversed(text) if "SslscaleError" in line), text[-1] if text else "")
    return msg.split("SslscaleError: ")[-1] or type(e).__name__


def _finish(cfg: Config, run_id: str, uri: str, run_dir: str, final: str) -> tuple[str, dict]:
    encoder_path = os.path.join(run_dir, checkpoint.ENCODER)
    shutil.copyfile(os.path.join(final, checkpoint.ENCODER), encoder_path + ".tmp")
    os.replace(encoder_path + ".tmp", encoder_path)
    scores = {}
    if cfg.transfer.enabled:
        print(f"scoring the encoder on {cfg.transfer.target} (kNN k={cfg.transfer.knn_k}, linear probe)...", flush=True)
        scores = transfer.evaluate(load_encoder(encoder_path), cfg.transfer)
    if run_id:
        tracking.log_artifact(uri, run_id, encoder_path, "encoder")
        if scores:
            tracking.log_metrics(uri, run_id, {f"transfer/{k}": v for k, v in scores.items()})
        tracking.log_artifact(uri, run_id, tracking.plot_curves(uri, run_id, os.path.join(run_dir, "curves.png")))
        tracking.end_run(uri, run_id)
    return encoder_path, scores


def pretrain(cfg: Config, *, resume: str | None = None) -> PretrainResult:
    """Train cfg's method on cfg's corpus under Ray Train + DeepSpeed, log to MLflow, score the transfer target.
    `resume` (a run id or run folder) continues that run from its latest checkpoint, in the same MLflow run."""
    validate(cfg)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    corpus_dir = corpus.resolve(cfg.data.corpus)
    input_spec = _input_spec(corpus_dir, cfg.data.split)
    run_id, run_dir = _open_run(cfg, uri, resume)
    print(f"run {run_id or '(tracking off)'}: {cfg.method.name} on {corpus_dir}, {cfg.train.steps} steps, "
          f"{cfg.train.workers} workers, files in {run_dir}", flush=True)
    final = _train(cfg, run_id, uri, run_dir, corpus_dir, input_spec)
    encoder_path, scores = _finish(cfg, run_id, uri, run_dir, final)
    return PretrainResult(run_id, run_dir, final, encoder_path, uri, scores)
