"""Plain Ray, in one place: starting or joining a Ray instance for the driver.

`RAY_ADDRESS` (or `address=`) joins an existing cluster; otherwise a local instance starts with a few more
logical CPUs than cores, so Ray Data's tasks still run while every training worker holds a CPU.
"""
from __future__ import annotations

import logging
import os

import ray


# Ray Train settings for every Train process: print() stays print (Ray's patch also logged each line, so a worker's
# progress line reached the driver twice), and no preemption watcher (the loop does not act on drain notices; its
# restartable actor made Ray log a core-worker error in every run). Retries are pretraining._train's.
QUIET_TRAIN = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def worker_env() -> dict:
    """Environment variables every Ray process of a run gets: bounded MLflow retries and QUIET_TRAIN."""
    keys = [k for k in os.environ if k.startswith("MLFLOW_HTTP_REQUEST_")]
    return {**QUIET_TRAIN, **{k: os.environ[k] for k in keys}}


def ensure_ray(address: str | None = None, log_to_driver: bool = True) -> None:
    """Join RAY_ADDRESS (or `address`) or start a local instance, with worker_env() in every Ray process; no-op
    when Ray is up (also inside a Tune trial). A sweep passes log_to_driver=False: its driver prints a line per
    trial event, not every worker's output."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"runtime_env": {"env_vars": worker_env()}, "logging_level": logging.WARNING,
              "log_to_driver": log_to_driver}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Token auth stays on (Ray 2.60's default for a local instance) without Ray's warning that it is
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls (127.0.0.1 only).
        ray.init(num_cpus=(os.cpu_count() or 2) + 2, include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)


def cluster_resources() -> dict[str, float]:
    """Resources of the whole cluster Ray is connected to ({"CPU": 4.0, ...})."""
    return dict(ray.cluster_resources())


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
