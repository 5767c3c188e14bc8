"""Plain Ray, in one place: starting or joining a Ray instance for the driver, and Ray jobs on a cluster.

`RAY_ADDRESS` (or `address=`) joins an existing cluster; otherwise a local instance starts with a few more
logical CPUs than cores, so Ray Data's tasks still run while every training worker holds a CPU. Inside a Ray job
the job's runtime env already reaches every worker; Ray refuses an env var set both there and in `ray.init`.
Jobs go through Ray's Job SDK (`JobSubmissionClient`) with the cluster's auth token (see `Jobs`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time

import ray
import ray._private.state
import ray.exceptions
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from sslscale.errors import SslscaleError


# Ray Train settings for every Train process: print() stays print (Ray's patch also logged each line, so a worker's
# progress line reached the driver twice), no preemption watcher (the loop does not act on drain notices; its
# restartable actor made Ray log a core-worker error in every run), and the controller polls its workers every
# 0.5 s instead of 2 s: it learns sooner that they finished, ~1.5 s off every run's wind-down. Retries are
# pretraining._train's.
QUIET_TRAIN = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


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
    env = {k: v for k, v in worker_env().items() if k not in _job_env()}
    kwargs = {"runtime_env": {"env_vars": env} if env else None, "logging_level": logging.WARNING,
              "log_to_driver": log_to_driver}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Token auth stays on (Ray 2.60's default for a local instance) without Ray's warning that it is
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls (127.0.0.1 only).
        ray.init(num_cpus=(os.cpu_count() or 2) + 2, include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)


def _job_config() -> str:
    """The config Ray's job supervisor hands the driver of a Ray job (JSON; '' outside a job)."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    return os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "")


def in_job() -> bool:
    """Whether this driver runs as a Ray job (`sslscale submit`, `ray job submit`)."""
    return bool(_job_config())


def _job_env() -> dict:
    """The env vars of the Ray job this driver runs in ({} outside a job): Ray merges them into every worker."""
    job = json.loads(_job_config() or "{}")
    return (job.get("runtime_env") or {}).get("env_vars") or {}


def slots(capacities: list[tuple[dict, float]], bundle: dict[str, float]) -> float:
    """How many `bundle`s fit on nodes given as (total resources of one node, how many such nodes there may be)."""
    need = {k: v for k, v in bundle.items() if v > 0}
    return sum(count * min(math.floor(res.get(k, 0) / v + 1e-9) for k, v in need.items())
               for res, count in capacities if count) if need else math.inf


Need = tuple[dict, int]  # one bundle of resources, and how many of it must be placed at once


def fits(capacities: list[tuple[dict, float]], needs: list[Need], tries: int = 20000) -> bool:
    """Whether every bundle of `needs` can be placed at the same time on nodes given as in `slots`. Exact: the
    bundles of every group but the largest are placed one at a time on each kind of node in turn (a handful in
    practice: a Ray Data task, a sweep trial's driver), then the largest group is counted with `slots`. Past
    `tries` placements it answers True: a request too intricate to check is left to Ray."""
    needs = sorted(((b, n) for b, n in needs if n > 0 and any(v > 0 for v in b.values())), key=lambda need: need[1])
    if not needs:
        return True
    singles = [b for b, n in needs[:-1] for _ in range(n)]
    seen: set = set()  # (bundles placed, the nodes left) already tried: placing equal bundles in another order

    def place(kinds: dict, i: int) -> bool:
        caps = [(dict(kind), count) for kind, count in kinds.items() if count]
        if i == len(singles):
            return slots(caps, needs[-1][0]) >= needs[-1][1]
        state = (i, frozenset(kinds.items()))
        if state in seen:
            return False
        seen.add(state)
        if len(seen) > tries:
            return True
        for kind, count in kinds.items():
            if count and slots([(dict(kind), 1)], singles[i]) >= 1:
                left = tuple((k, round(v - singles[i].get(k, 0), 9)) for k, v in kind)
                if place(_add(_add(kinds, kind, -1), left, 1), i + 1):
                    return True
        return False

    return place(_kinds(capacities), 0)


def _kinds(capacities: list[tuple[dict, float]]) -> dict:
    """{node resources as a sorted tuple: how many such nodes}, equal nodes merged."""
    kinds: dict = {}
    for res, count in capacities:
        kinds = _add(kinds, tuple(sorted(res.items())), count)
    return kinds


def _add(kinds: dict, kind: tuple, count: float) -> dict:
    return {**kinds, kind: kinds.get(kind, 0) + count}


def _capacities() -> tuple[list[tuple[dict, float]], list[tuple[dict, float]], str]:
    """(the cluster's nodes, alive or not: a lost node may come back; the node types an autoscaler may start, up to
    their max_workers: KubeRay's reported node groups, or the `ray up` head's copy of ray_cluster.yaml; what the
    latter are)."""
    nodes = [(n["Resources"], 1) for n in ray.nodes()]
    config = ray._private.state.state.get_cluster_config()  # what Ray Train's own check reads
    if config and config.node_group_configs:
        return nodes, [(dict(g.resources), math.inf if g.max_count < 0 else g.max_count)
                       for g in config.node_group_configs], "its autoscaler's node groups"
    launcher = os.path.expanduser("~/ray_bootstrap_config.yaml")
    if os.path.isfile(launcher):
        with open(launcher) as f:
            types = (yaml.safe_load(f) or {}).get("available_node_types") or {}
        return nodes, [(t.get("resources") or {}, t.get("max_workers", 0)) for t in types.values()], \
            "its config's node types at their max_workers"
    return nodes, [], ""


def capacities() -> list[tuple[dict, float]]:
    """Every node the cluster has or may get (see _capacities), as `fits` takes them."""
    nodes, more, _ = _capacities()
    return nodes + more


def placement(needs: list[Need]) -> tuple[str, str]:
    """Whether `needs` (all at once) can be placed on this cluster: ('', '') on its nodes now; ('', why it waits)
    once its autoscaler adds nodes; (what room there is, '') never, where Ray would wait forever."""
    nodes, more, source = _capacities()
    if fits(nodes, needs):
        return "", ""
    if more and fits(nodes + more, needs):
        return "", f"they fit only once the autoscaler adds nodes ({source})"
    where = "the cluster's nodes" + (f" and {source}" if more else "")
    return f"{where} have {describe(nodes + more)}", ""


def require(needs: list[Need], what: str, key: str) -> None:
    """One line (SslscaleError) where `needs`, described as `what`, can never be placed on this cluster, with the
    ways out (`key` sets how many training workers there are); a line where they wait for the autoscaler."""
    problem, wait = placement(needs)
    if problem:
        raise SslscaleError(f"{what} can never run at once: {problem}; add a node with spare CPUs, lower {key} or "
                            f"what each worker asks for (train.cpus_per_worker, train.worker_resources, "
                            f"train.use_gpu), or lower data.cpus (a task takes min(1, data.cpus) CPUs)")
    if wait:
        print(f"{what}: {wait}; waiting for them", flush=True)


def describe(capacities: list[tuple[dict, float]]) -> str:
    """'1 node of CPU 0, sslscale_driver 8; 2 nodes of CPU 2': what a placement error shows of the cluster."""
    kinds: dict[tuple, float] = {}
    for res, count in ((r, c) for r, c in capacities if c):
        kind = tuple(sorted({"CPU": 0, **{k: v for k, v in res.items() if not _internal(k)}}.items()))
        kinds[kind] = kinds.get(kind, 0) + count
    parts = [f"{'no limit of' if math.isinf(n) else int(n)} node{'s' if n != 1 else ''} of "
             f"{', '.join(f'{k} {v:g}' for k, v in kind)}" for kind, n in kinds.items()]
    return "; ".join(sorted(parts)) or "no nodes"


def _internal(key: str) -> bool:
    """Resources Ray adds of its own: memory, the object store, node:<ip>, placement-group bundles."""
    return key in ("memory", "object_store_memory") or key.startswith("node:") or "_group_" in key


def cluster_resources() -> dict[str, float]:
    """Resources of the whole cluster Ray is connected to ({"CPU": 4.0, ...})."""
    return dict(ray.cluster_resources())


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


# --- Ray jobs: what `sslscale submit` does ------------------------------------------------------------------------

DASHBOARD = "http://127.0.0.1:8265"
TOKEN_HELP = ("export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file>); "
              "`ray get-auth-token` on the head node prints it")


def job_address(address: str | None = None) -> str:
    """The cluster's dashboard URL: `address`, $RAY_API_SERVER_ADDRESS or an http $RAY_ADDRESS, else the local one."""
    for candidate in (address, os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")):
        if candidate and candidate.startswith(("http://", "https://")):
            return candidate.rstrip("/")
    if address:
        return "http://" + address.rstrip("/")
    return DASHBOARD


def _job_error(url: str, e: Exception) -> SslscaleError:
    """One line for what talking to the job server can meet: no server, no or a wrong token, an unknown job."""
    text = str(e).strip()
    if isinstance(e, ray.exceptions.AuthenticationError):
        what = "needs its auth token" if text.startswith("Authentication required") else "refused the auth token"
        return SslscaleError(f"the Ray cluster at {url} {what}: {TOKEN_HELP}")
    if isinstance(e, ConnectionError):
        return SslscaleError(f"no Ray job server answers at {url}: start the cluster (`ray up ray_cluster.yaml`, "
                             f"or `ray start --head`), forward its port (`ray dashboard ray_cluster.yaml`), "
                             f"or pass --address")
    line = text.splitlines()[-1] if text else type(e).__name__
    return SslscaleError(f"Ray job server at {url}: {line}")


class Jobs:
    """Ray's Job SDK against one cluster, each call's failure turned into one SslscaleError line."""

    def __init__(self, address: str | None = None):
        # Ray's client-side lines (files left out of the upload, the upload, .git and .venv excluded by default, a
        # log stream closing) are not the job's output
        for name in ("ray._private.runtime_env.packaging", "ray.dashboard.modules.job.sdk",
                     "ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.working_dir"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.url = job_address(address)
        self.client = self._call(JobSubmissionClient, self.url)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SslscaleError:
            raise
        except Exception as e:  # noqa: BLE001 - requests, aiohttp and Ray errors all end here as one line
            raise _job_error(self.url, e) from e

    def submit(self, entrypoint: str, working_dir: str, resources: dict[str, float] | None = None) -> str:
        """Start `entrypoint` on the cluster in a copy of working_dir (without what .gitignore lists, nor .git);
        every process of the job gets worker_env(). Returns the submission id."""
        cpus = (resources or {}).get("CPU")
        others = {k: v for k, v in (resources or {}).items() if k != "CPU"} or None
        # RAY_JOB_STOP_WAIT_TIME_S (default 3 s between a stop's SIGTERM and SIGKILL) reaches the job supervisor too
        grace = {k: os.environ[k] for k in ("RAY_JOB_STOP_WAIT_TIME_S",) if k in os.environ}
        runtime_env = {"working_dir": working_dir, "excludes": [".git"], "env_vars": {**worker_env(), **grace}}
        deadline = time.time() + 60
        while True:  # a head that has just started answers "No available agent" until its agent registers
            try:
                return self._call(self.client.submit_job, entrypoint=entrypoint, runtime_env=runtime_env,
                                  entrypoint_num_cpus=cpus, entrypoint_resources=others)
            except SslscaleError as e:
                if "No available agent" not in str(e) or time.time() > deadline:
                    raise
                time.sleep(2)

    def follow(self, job_id: str) -> JobStatus:
        """Print the job's output as it comes until it ends; returns its final status."""
        async def tail():
            async for lines in self.client.tail_job_logs(job_id):
                print(lines, end="", flush=True)

        self._call(asyncio.run, tail())
        return self.wait(job_id, timeout=30)

    def wait(self, job_id: str, timeout: float) -> JobStatus:
        """The job's status once it is terminal, or as it is after `timeout` seconds."""
        deadline = time.time() + timeout
        while True:
            status = self._call(self.client.get_job_status, job_id)
            if status.is_terminal() or time.time() > deadline:
                return status
            time.sleep(1)

    def info(self, job_id: str):
        return self._call(self.client.get_job_info, job_id)

    def logs(self, job_id: str) -> str:
        return self._call(self.client.get_job_logs, job_id)

    def list(self) -> list:
        return self._call(self.client.list_jobs)

    def stop(self, job_id: str) -> bool:
        return self._call(self.client.stop_job, job_id)
