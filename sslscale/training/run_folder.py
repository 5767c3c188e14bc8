"""A run folder's own record, run.json: writing it, reading a field of it, finding a run's folder from its id or
path, and the config a resumed run continues with (its own, with only the RESUMABLE keys changed)."""
from __future__ import annotations

import os

from sslscale import storage
from sslscale.config import Config
from sslscale.errors import SslscaleError
from sslscale.runtime import tracking

RUN_FILE = "run.json"

# Keys a resumed run may change: how long and how it runs, never what it learns from or how it is built.
RESUMABLE = ("train.steps", "train.checkpoint_every", "train.health_every", "train.log_every",
             "train.keep_checkpoints", "train.max_failures", "train.max_bad_steps", "train.cpus_per_worker",
             "train.threads_per_worker", "optim.lr", "optim.clip", "data.cpus", "data.buffer_mb", "tracking.uri",
             "transfer.")


def run_field(run_dir: str, key: str, default=""):
    """One field of a run folder's run.json, or default when the file or key is missing."""
    try:
        return storage.read_json(storage.join(run_dir, RUN_FILE)).get(key, default)
    except (OSError, ValueError, SslscaleError):
        return default


def find_run_dir(resume: str, uri: str) -> str:
    """A run folder from a run id (its MLflow tag) or a folder holding run.json."""
    if storage.isfile(storage.join(resume, RUN_FILE)):
        return storage.absolute(resume)
    if storage.is_uri(resume) or os.path.isdir(resume):
        raise SslscaleError(f"{resume} holds no {RUN_FILE}: pass a run id or the run's folder under train.storage")
    run = tracking.get_run(uri, resume)
    run_dir = run.data.tags.get("sslscale.run_dir", "")
    if run_field(run_dir, "run_id") != resume:
        raise SslscaleError(f"run {resume} has no run folder of its own at {run_dir!r}: it was moved or deleted; "
                            f"pass the folder instead")
    return run_dir


def resume_config(resume: str, overrides: list[str], uri: str = "") -> Config:
    """The resumed run's own config, with its own store, and `overrides` of the RESUMABLE keys applied."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE):
            raise SslscaleError(f"{key} cannot change when resuming (the checkpoint was made with it); "
                                f"resumable keys: {', '.join(RESUMABLE)}")
    run_dir = find_run_dir(resume, tracking.resolve_uri(uri))
    saved = storage.read_json(storage.join(run_dir, RUN_FILE))
    cfg = Config.from_dict(saved["config"])
    cfg.tracking.uri = saved["uri"]
    return cfg.override(overrides)


def write_run_file(run_dir: str, run_id: str, uri: str, cfg: Config) -> None:
    """run.json: the run's MLflow id, store and whole config (what a resume reads back)."""
    storage.write_json(storage.join(run_dir, RUN_FILE), {"run_id": run_id, "uri": uri, "config": cfg.to_dict()},
                       indent=2)
