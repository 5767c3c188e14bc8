"""Pretraining as a plain function: `pretrain(config) -> PretrainResult` (run id, checkpoint, encoder, scores).

The driver's side of a run: validate the config, check the corpus, open (or reopen) the MLflow run, start the
Ray Train workers on the view stream, then export the encoder, log the artifacts and score the transfer target.
The CLI, a Tune trial, a test and a notebook all call this. A run's files live in <train.storage>/<run id>/:
run.json (what --resume needs, see training/run_folder.py), lease.json (which live process writes the run, see
lease.py), attempt-N/ (Ray Train's checkpoints per driver attempt), encoder.safetensors. SIGINT and SIGTERM
(Ctrl-C, `kill`, a Ray job stop) end a run as KILLED in MLflow with one line: the step its last intact checkpoint
holds and the `--resume` command. A driver that dies (SIGKILL, the OOM killer) ends its run too, locally and as a
Ray job alike: Ray ends the job's actors (Train's controller, then its workers), a local Ray instance dies with its driver, and the
workers watch the driver's lease and exit within a second (lease.watch). The run stays RUNNING in MLflow until a
`--resume`, which takes the dead driver's lease over, continues it from its latest checkpoint.
"""
from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

from sslscale import storage, timeline
from sslscale.checks import validate
from sslscale.config import Config
from sslscale.data import corpus, stream
from sslscale.data.modalities import KINDS, Modality, data_field, data_fields
from sslscale.errors import SslscaleError, root_cause
from sslscale.evaluation import transfer, zeroshot
from sslscale.methods import build_method, kinds_read, view_parts
from sslscale.runtime import tracking
from sslscale.runtime.cluster import ensure_ray, in_job, shutdown
from sslscale.training import checkpoint, lease, train
from sslscale.training.export import load_encoder, start_from
from sslscale.training.run_folder import find_run_dir, run_field, write_run_file

SKIPPED = "skipped"  # the stream's records of what data.on_error=skip left out; merged into skipped.json


@dataclass
class PretrainResult:
    run_id: str
    run_dir: str
    checkpoint: str
    encoder_path: str
    tracking_uri: str
    scores: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # seconds of start-up and wind-down by phase (timeline.phases)


class RunStopped(SslscaleError):
    """The run was stopped by a signal; the message is the one line for the user (step, checkpoint, --resume)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class _Signalled(KeyboardInterrupt):
    """Raised by the SIGINT/SIGTERM handler. Not an Exception, so _train never takes it for a failed attempt; a
    KeyboardInterrupt, as the only exception ray.get lets through (as a new KeyboardInterrupt: see `last`)."""

    last = signal.SIGINT  # the latest signal the handler saw

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _data_fields(corpus_dir: str, cfg: Config) -> dict[str, Modality]:
    """The corpus's declared data fields (modalities) the method's encoder and towers read, by kind (the
    encoder's first), checked against the method and the model before any worker starts, as is every field the
    method's views read (stream.view_parts): each one's `encoder_input` is its encoder's input spec (channels and
    side, vocabulary and length)."""
    from sslscale.encoders import NAMES as ENCODER_NAMES, encoder_class

    corpus.verify_shards(corpus_dir, cfg.data.split, hashes=False)  # the stream checks each shard's sha256 as it reads
    manifest = corpus.load_manifest(corpus_dir)
    kinds = {f.kind: f for f in data_fields(manifest, corpus_dir).values()}
    for wanted in kinds_read(cfg):
        if wanted not in kinds:
            holds = " and ".join(f.noun for f in kinds.values())
            raise SslscaleError(f"method.name={cfg.method.name} trains on {KINDS[wanted].noun} but corpus "
                                f"{corpus_dir} holds {holds}: pick a method or a corpus of the other kind (docs/"
                                "methods.md)")
    fields = {kind: data_field(manifest, corpus_dir, kind) for kind in kinds_read(cfg)}
    field = next(iter(fields.values()))
    takes = encoder_class(cfg.model.encoder).modality
    if takes != field.kind:
        fitting = " or ".join(name for name in ENCODER_NAMES if encoder_class(name).modality == field.kind)
        raise SslscaleError(f"model.encoder={cfg.model.encoder} takes {KINDS[takes].noun} but corpus {corpus_dir} "
                            f"holds {field.noun}: set model.encoder={fitting}")
    field.check_model(cfg.model, corpus_dir)
    view_parts(cfg, corpus_dir)  # every field the method's views read: there, and of the kind its layout is for
    return fields


def _open_run(cfg: Config, uri: str, resume: str | None, tags: dict | None = None) -> tuple[str, str, lease.Lease]:
    """(run id, run dir, its lease): a new run, or the resumed one (its run.json then records the effective config),
    refused in one line while another live process still writes it."""
    if resume:
        run_dir = find_run_dir(resume, uri)
        run_id = run_field(run_dir, "run_id")
        held = lease.acquire(run_dir, run_id or run_dir)
        write_run_file(run_dir, run_id, uri, cfg)
        if run_id:
            tracking.best_effort(tracking.reopen_run, uri, run_id)
            tracking.best_effort(tracking.set_tags, uri, run_id,
                                 {"sslscale.resumed": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return run_id, run_dir, held
    run_id = tracking.start_run(uri, cfg, tags) if cfg.tracking.enabled else ""
    name = run_id or time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
    run_dir = storage.join(storage.absolute(cfg.train.storage), name)
    if storage.exists(run_dir):
        raise SslscaleError(f"run folder {run_dir} exists already: resume it with --resume, or start a new run")
    storage.makedirs(run_dir)
    held = lease.acquire(run_dir, name)
    write_run_file(run_dir, run_id, uri, cfg)
    if run_id:
        tracking.best_effort(tracking.set_tags, uri, run_id, {"sslscale.run_dir": run_dir})
    return run_id, run_dir, held


def _attempt(cfg: Config, run_id: str, uri: str, run_dir: str, corpus_dir: str, inputs: dict, marks,
             **fit_kw) -> None:
    """One TorchTrainer fit from the run's latest checkpoint, on a stream that skips what it consumed."""
    last = checkpoint.latest(run_dir)
    samples = corpus.load_manifest(corpus_dir)["splits"][cfg.data.split]["samples"]
    consumed = checkpoint.read_positions(last, samples) if last else None
    parts = view_parts(cfg, corpus_dir)
    dataset = stream.pretrain_dataset(cfg, corpus_dir, parts, consumed=consumed,
                                      skip_dir=storage.join(run_dir, SKIPPED))
    attempt = len([d for d in storage.listdir(run_dir) if d.startswith("attempt-")])
    marks["fit"] = time.time()  # the last attempt's: rank 0's marks come from its checkpoints
    train.fit(cfg, datasets={"train": dataset}, ingest=stream.ingest_options(cfg, parts), run_id=run_id, uri=uri,
              inputs=inputs, storage=run_dir, name=f"attempt-{attempt}", samples=samples, resume_from=last,
              corpus_dir=corpus_dir, **fit_kw)


def _check_placement(cfg: Config, run_id: str, uri: str) -> None:
    """The run's Ray Train workers and their Ray Data task, and fine-tuning's workers (transfer.finetune_workers
    > 1), fit the cluster (train.check_workers): one line and the run FAILED now, not a wait forever or a failure
    after the last step."""
    t = cfg.transfer
    checks = [(cfg.train.workers, "train.workers")]
    if t.enabled and t.finetune_workers > 1 and set(transfer.chosen(t)[0]) & set(transfer.TRAINED_PROTOCOLS):
        checks.append((t.finetune_workers, "transfer.finetune_workers"))
    try:
        for workers, key in checks:
            train.check_workers(cfg, workers, key)
    except SslscaleError:
        if run_id:
            tracking.best_effort(tracking.end_run, uri, run_id, "FAILED")
        raise


def _done(run_dir: str, steps: int) -> str | None:
    last = checkpoint.latest(run_dir)
    return last if last and checkpoint.read_state(last)["step"] >= steps else None


def _train(cfg: Config, run_id: str, uri: str, run_dir: str, corpus_dir: str, inputs: dict, held: lease.Lease,
           marks, **fit_kw) -> str:
    """Train to cfg.train.steps, retrying a failed attempt (a dead worker or node) from the latest checkpoint up to
    train.max_failures times. Each retry rebuilds the stream without the samples already consumed, which Ray's own
    worker-group restart cannot do. Returns the final checkpoint folder."""
    stream.quiet()
    for retry in range(cfg.train.max_failures + 1):
        if _done(run_dir, cfg.train.steps):
            break
        try:
            _attempt(cfg, run_id, uri, run_dir, corpus_dir, inputs, marks, lease_info=held.for_workers(),
                     **fit_kw)
        except Exception as e:  # noqa: BLE001 - Ray wraps worker errors; the user needs the root cause in one line
            if held.lost:  # its workers stopped because another process took the run over: not a failure to retry
                raise SslscaleError(f"run {run_id or run_dir} was taken over by {held.holder()}; this process "
                                    f"stops") from None
            cause, ours = root_cause(e)
            if retry == cfg.train.max_failures or ours:  # bad input or bad numbers: a retry cannot help
                if run_id:
                    tracking.best_effort(tracking.end_run, uri, run_id, "FAILED")
                raise SslscaleError(f"training failed: {cause}") from e
            print(f"training attempt failed ({cause}); retrying from the latest checkpoint "
                  f"({retry + 1} of {cfg.train.max_failures})", flush=True)
    final = _done(run_dir, cfg.train.steps)
    if final is None:
        raise SslscaleError(f"training ended without a final checkpoint in {run_dir}; see the worker log above")
    return final


def _report_skipped(run_dir: str, uri: str, run_id: str) -> None:
    """skipped.json (each skipped shard and sample with its reason), metrics and one line, when anything was."""
    found = stream.skipped(storage.join(run_dir, SKIPPED))
    if not any(found.values()):
        return
    path = storage.join(run_dir, "skipped.json")
    storage.write_json(path, found, indent=2)
    print(f"data.on_error=skip left out {len(found['shard'])} shard(s) and {len(found['sample'])} sample(s): "
          f"see {path}", flush=True)
    if run_id:
        counts = {"data/skipped_shards": len(found["shard"]), "data/skipped_samples": len(found["sample"])}
        tracking.best_effort(tracking.log_metrics, uri, run_id, counts)
        with storage.local(path) as local:
            tracking.best_effort(tracking.log_artifact, uri, run_id, local)


def _deliver_held_metrics(uri: str, run_id: str, final: str, steps: int, wait_s: float = 90) -> None:
    """Send what the final checkpoint holds and MLflow has not got (it was away when training ended), waiting up
    to wait_s for it to come back; if it does not, a later `--resume` of the finished run sends them."""
    held = tracking.MetricBuffer(uri, run_id, warn=False)
    held.restore(checkpoint.read_state(final).get("pending_metrics", []))
    deadline, said = time.time() + wait_s, False
    # flush asks the store what it already has before its first send, so nothing goes twice
    while held.pending and not held.flush(steps, force=True):
        if time.time() > deadline:
            print(f"MLflow at {tracking.shown(uri)} is still away: the metrics of {len(held.pending)} steps stay "
                  f"in {final}; `sslscale pretrain --resume {run_id}` sends them once it is back", flush=True)
            return
        if not said:
            print(f"waiting up to {wait_s:.0f} s for MLflow at {tracking.shown(uri)} to take the last metrics...",
                  flush=True)
            said = True
        time.sleep(5)


def _finish(cfg: Config, run_id: str, uri: str, run_dir: str, final: str) -> tuple[str, dict]:
    """The encoder into the run folder, its transfer scores, the held metrics, artifacts and the run's end."""
    encoder_path = storage.join(run_dir, checkpoint.ENCODER)
    storage.copy_file(storage.join(final, checkpoint.ENCODER), encoder_path)
    safe = tracking.best_effort
    if run_id:  # what training made reaches the run before scoring, which may fail (a bad target, memory)
        from sslscale.evaluation import mlflow_model  # imports mlflow.pyfunc: only where a run ends

        _deliver_held_metrics(uri, run_id, final, cfg.train.steps)
        with storage.local(encoder_path) as local:
            safe(tracking.log_artifact, uri, run_id, local, "encoder")
            if not safe(mlflow_model.logged, uri, run_id):  # the Models tab, the registry, mlflow.pyfunc
                safe(mlflow_model.log, uri, run_id, local)
        _log_plots(uri, run_id, run_dir, {"curves.png": tracking.plot_curves, "spectrum.png": tracking.plot_spectrum})
    scores, made = {}, []
    with tempfile.TemporaryDirectory(prefix="sslscale-pictures-") as pictures:
        try:
            if cfg.transfer.enabled:
                print(f"scoring the encoder on {cfg.transfer.target} ({cfg.transfer.protocols}; kNN "
                      f"k={cfg.transfer.knn_k}, label fractions {cfg.transfer.label_fractions})...", flush=True)
                scores, made = transfer.timed_evaluate(load_encoder(encoder_path), cfg.transfer, cfg, pictures)
                scores.update(zeroshot.evaluate_export(encoder_path, cfg.transfer))
        except Exception:  # a stop (KeyboardInterrupt) ends the run KILLED in pretrain()
            if run_id:
                safe(tracking.end_run, uri, run_id, "FAILED")
            raise
        if run_id:
            if scores:
                safe(tracking.log_metrics, uri, run_id, {f"transfer/{k}": v for k, v in scores.items()})
            _log_files(uri, run_id, run_dir, made)
            safe(tracking.end_run, uri, run_id)
    return encoder_path, scores


def _log_plots(uri: str, run_id: str, run_dir: str, makers: dict) -> None:
    """Each plot of `makers` (file name -> make(uri, run_id, out_png), None when there is nothing to plot) as an
    artifact of the run and a copy in its folder; best effort."""
    with tempfile.TemporaryDirectory(prefix="sslscale-plots-") as tmp:
        made = [tracking.best_effort(make, uri, run_id, os.path.join(tmp, name)) for name, make in makers.items()]
        _log_files(uri, run_id, run_dir, [plot for plot in made if plot])


def _log_files(uri: str, run_id: str, run_dir: str, paths: list[str]) -> None:
    """Local files as artifacts of the run and copies in its folder; best effort."""
    for path in paths:
        tracking.best_effort(tracking.log_artifact, uri, run_id, path)
        tracking.best_effort(storage.copy_file, path, storage.join(run_dir, os.path.basename(path)))


@contextmanager
def _signals_stop_the_run():
    """SIGINT and SIGTERM raise _Signalled in the main thread while the run trains and finishes (elsewhere, e.g. in
    a Tune trial, signals are left alone). Entered after ray.init, which installs a SIGTERM handler of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _Signalled.last = signum  # Ray may hand the exception back as a KeyboardInterrupt from inside ray.get
        raise _Signalled(signum)

    _Signalled.last = signal.SIGINT
    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:  # a handler installed from C reads as None: the default takes its place
        for s, h in before.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _stopped(signum: int, cfg: Config, run_id: str, uri: str, run_dir: str, held: lease.Lease) -> RunStopped:
    """End a run stopped by a signal: leave Ray (so no worker's last words reach the console; a local instance
    stops, a cluster ends the job's actors), release the lease (a worker still running exits within lease.WATCH_S,
    before another checkpoint), mark the MLflow run KILLED, and say in one line what is saved and how to go on.
    Takes 1-3 s (most of it stopping a local Ray instance), inside the 3 s a Ray job stop waits before SIGKILL."""
    shutdown()
    released = time.time()
    held.release()
    if run_id:
        tracking.best_effort(tracking.end_run, uri, run_id, "KILLED")
    time.sleep(max(0.0, released + lease.WATCH_S - time.time()))  # a checkpoint in flight lands or tears
    last = checkpoint.latest(run_dir)
    step = checkpoint.read_state(last)["step"] if last else 0
    job = "submit -- " if in_job() else ""  # a Ray job's run is resumed as a job
    command = f"sslscale {job}pretrain --resume {run_id or run_dir}"
    if run_id and uri != tracking.resolve_uri(""):
        command += f" tracking.uri={tracking.shown(uri)}"
    saved = f"step {step} of {cfg.train.steps} is saved in {last}" if last else "no checkpoint was written yet"
    killed = f"MLflow run {run_id} is KILLED; " if run_id else ""
    return RunStopped(f"stopped by {signal.Signals(signum).name}; {saved}; {killed}go on with: {command}", signum)


def preflight(cfg: Config, starting: bool = True) -> tuple[str, dict]:
    """(corpus folder, the input spec of each encoder by kind: {kind: spec}, the encoder's first) after what a run
    checks before it opens anything: the config, the corpus and its images against the model, the transfer target
    against them (a target that cannot score the encoder fails now, not after the last step) and, for a run
    `starting` (not resumed), model.init's file against the encoders. A sweep checks its base config the same way."""
    validate(cfg)
    corpus_dir = corpus.resolve(cfg.data.corpus)
    fields = _data_fields(corpus_dir, cfg)
    if cfg.transfer.enabled:  # the encoder's kind in the target, and a tower's where the target holds it
        for i, read in enumerate(fields.values()):
            transfer.check_target(cfg.transfer, read, corpus_dir, required=i == 0)
    inputs = {kind: read.encoder_input() for kind, read in fields.items()}
    if cfg.model.init and starting:  # the file, its kind, architecture and tokenizer, before any worker starts
        build_method(cfg, inputs, start=lambda encoders: start_from(encoders, cfg.model.init,
                                                                    corpus.tokenizer_bytes(corpus_dir)))
    return corpus_dir, inputs


def pretrain(cfg: Config, *, resume: str | None = None, tags: dict | None = None, callbacks: tuple = (),
             report_extra: dict | None = None) -> PretrainResult:
    """Train cfg's method on cfg's corpus under Ray Train + DeepSpeed, log to MLflow, score the transfer target.
    `resume` (a run id or run folder) continues that run from its latest checkpoint, in the same MLflow run.
    A sweep trial adds MLflow `tags` to a new run, Ray Train `callbacks` and `report_extra` (see train.fit).
    SIGINT or SIGTERM (in the main thread) raise RunStopped after ending the run as KILLED."""
    marks = timeline.Marks()
    marks.mark("start")
    if cfg.model.init:  # read by workers in Ray's working directory, and by a resume started elsewhere
        cfg = cfg.override([f"model.init={storage.absolute(cfg.model.init)}"])
    corpus_dir, inputs = preflight(cfg, starting=not resume)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    run_id, run_dir, held = _open_run(cfg, uri, resume, tags)
    if run_id and not resume:  # what it reads, on MLflow's run page
        target = corpus.resolve(cfg.transfer.target, False) if cfg.transfer.enabled else corpus_dir
        corpora = {"training": corpus_dir, **({"evaluation": target} if target != corpus_dir else {})}
        tracking.best_effort(tracking.log_datasets, uri, run_id, corpora)
    print(f"run {run_id or '(tracking off)'}: {cfg.method.name} on {corpus_dir}, {cfg.train.steps} steps, "
          f"{cfg.train.workers} workers, files in {run_dir}", flush=True)
    try:
        marks.mark("ray_start")
        ensure_ray()
        marks.mark("ray_ready")
        _check_placement(cfg, run_id, uri)
        with _signals_stop_the_run():
            try:
                final = _train(cfg, run_id, uri, run_dir, corpus_dir, inputs, held, marks, callbacks=callbacks,
                               report_extra=report_extra)
            finally:
                _report_skipped(run_dir, uri, run_id)  # also when the run failed: what was left out may be why
            marks.mark("fit_done")
            encoder_path, scores = _finish(cfg, run_id, uri, run_dir, final)
            timings = _timings(marks, final, uri, run_id)
    except KeyboardInterrupt as e:  # _Signalled, or Ray's stand-in for it
        raise _stopped(getattr(e, "signum", _Signalled.last), cfg, run_id, uri, run_dir, held) from None
    finally:
        held.release()
    return PretrainResult(run_id, run_dir, final, encoder_path, uri, scores, timings)


def _timings(marks: timeline.Marks, final: str, uri: str, run_id: str) -> dict:
    """Start-up and wind-down by phase from the driver's marks and rank 0's (in the final checkpoint), logged to
    the run (after its end: they are not what the run learnt, and MLflow takes metrics of a finished run)."""
    marks.mark("done")
    timings = timeline.phases({**checkpoint.read_state(final).get("timeline", {}), **marks})
    if run_id and timings:
        tracking.best_effort(tracking.log_metrics, uri, run_id, timings)
    return timings
