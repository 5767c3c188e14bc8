"""Plain Ray, in one place: starting or joining a Ray instance for the driver.

`RAY_ADDRESS` (or `address=`) joins an existing cluster; otherwise a local instance starts with a few more
logical CPUs than cores, so Ray Data's tasks still run while every training worker holds a CPU.
"""
from __future__ import annotations

import logging
import os

import ray


def ensure_ray(address: str | None = None, env_vars: dict | None = None, log_to_driver: bool = True) -> None:
    """Join RAY_ADDRESS (or `address`) or start a local instance; no-op when Ray is up (also inside a Tune trial).
    A sweep passes log_to_driver=False: its driver prints a line per trial event, not every worker's output."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"runtime_env": {"env_vars": env_vars or {}}, "logging_level": logging.WARNING,
              "log_to_driver": log_to_driver}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Token auth stays on (Ray 2.60's default for a local instance) without Ray's warning that it is
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls (127.0.0.1 only).
        ray.init(num_cpus=(os.cpu_count() or 2) + 2, include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)


def cluster_cpus() -> float:
    """Logical CPUs of the whole cluster Ray is connected to."""
    return float(ray.cluster_resources().get("CPU", 0.0))


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
