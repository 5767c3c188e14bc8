"""Plain Ray, in one place: starting or joining a Ray instance for the driver.

`RAY_ADDRESS` (or `address=`) joins an existing cluster; otherwise a local instance starts with a few more
logical CPUs than cores, so Ray Data's tasks still run while every training worker holds a CPU.
"""
from __future__ import annotations

import logging
import os

import ray


def ensure_ray(address: str | None = None, env_vars: dict | None = None) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": env_vars or {}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
    else:
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls (127.0.0.1 only).
        ray.init(num_cpus=(os.cpu_count() or 2) + 2, include_dashboard=True, dashboard_host="127.0.0.1",
                 runtime_env=runtime_env, logging_level=logging.WARNING)


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
