"""MLflow, in one place: store URI resolution, runs (nested, resumable), params, buffered metrics, artifacts, plots.

Everything goes through an explicit `MlflowClient(uri)` and run id, never mlflow's global active run, so the
driver, a Ray Train worker and a Tune trial all log to the same run they were handed. HTTP retries are bounded
(a server that is away costs seconds, not minutes) and a failed call warns once instead of crashing training.
Metrics from training are held in a `MetricBuffer` until the checkpoint that covers their step exists, and a step
already in the store is never logged again, so a restarted run continues its step axis without duplicates.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
import warnings

for _key, _value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}.items():
    os.environ.setdefault(_key, _value)

from typing import TYPE_CHECKING  # noqa: E402

from sslscale import redact  # noqa: E402
from sslscale.config import flatten  # noqa: E402
from sslscale.errors import SslscaleError  # noqa: E402

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
log = logging.getLogger(__name__)  # operational warnings: logging, not `warnings` (Ray workers may drop those)
DEFAULT_URI = "sqlite:///mlruns.db"
MAX_PARAM_CHARS = 6000


def resolve_uri(uri: str = "") -> str:
    """'' -> $MLFLOW_TRACKING_URI or sqlite:///mlruns.db; a relative sqlite/file path becomes absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return "sqlite:///" + os.path.abspath(path)
    if "://" not in uri:
        return "file://" + os.path.abspath(uri)
    return uri


def shown(uri: str) -> str:
    """A store URI as printed: its password, if any, hidden."""
    return redact.scrub(uri)


def best_effort(fn, *args, **kwargs):
    """Call an MLflow function; on failure warn (what failed, and that the run folder holds the results)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the store being away must not lose a finished training
        log.warning(f"MLflow {fn.__name__} failed ({type(e).__name__}: {str(e)[:200]}); the checkpoint and "
                    f"encoder are safe in the run folder")
        return None


def client(uri: str) -> MlflowClient:
    """MLflow is imported here, on first use (~1 s of CPU): a Ray Train worker of rank > 0 or a Ray Data task that
    imports this module never logs, and skips it."""
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///") or uri in _opened:
        return MlflowClient(tracking_uri=uri)
    with _folder_lock(os.path.dirname(uri[len("sqlite:///"):]) or "."):
        c = MlflowClient(tracking_uri=uri)  # the first one in a process opens the store: creates its tables
    _opened.add(uri)
    return c


_opened: set[str] = set()


@contextlib.contextmanager
def _folder_lock(folder: str):
    """An exclusive lock on a sqlite store's folder while the store is first opened: opening a new file creates the
    tables (MLflow's migrations), and two processes migrating one file at once fail one of them (two runs started
    together in a new folder, or a test watching a run's store)."""
    import fcntl

    if not os.path.isdir(folder):
        yield  # MLflow's own error names the missing folder
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _metrics(items) -> list:
    """mlflow Metric entities from (key, value, timestamp ms, step) tuples."""
    from mlflow.entities import Metric

    return [Metric(k, float(v), ts, step) for k, v, ts, step in items]


def _experiment_id(c: MlflowClient, uri: str, name: str) -> str:
    """The experiment's id, created if new; either way tagged as classic ML (see UI_KIND_TAG) unless it has a kind."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if UI_KIND_TAG not in exp.tags:
            best_effort(c.set_experiment_tag, exp.experiment_id, UI_KIND_TAG, UI_KIND_ML)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = "file://" + os.path.join(os.path.dirname(uri[len("sqlite:///"):]), "mlartifacts")
    return c.create_experiment(name, artifact_location=location, tags={UI_KIND_TAG: UI_KIND_ML})


def provenance() -> dict[str, str]:
    """Package versions and git revision, logged as tags so a run can be reproduced."""
    from importlib.metadata import PackageNotFoundError, version

    tags = {"sslscale.python": platform.python_version(), "sslscale.command": " ".join(redact.argv(sys.argv))[:5000]}
    for pkg in ("sslscale", "torch", "ray", "deepspeed", "mlflow"):
        try:
            tags[f"sslscale.version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            pass
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        if rev.returncode == 0:
            tags["mlflow.source.git.commit"] = rev.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=5, cwd=here)
            tags["sslscale.git_dirty"] = str(bool(dirty.stdout.strip())).lower()  # uncommitted changes in use?
    except (OSError, subprocess.TimeoutExpired):
        pass
    return tags


def run_name(cfg, tags: dict) -> str:
    """A name that says what a run is, where tracking.run_name gives none: its recipe, method and corpus, and a
    sweep trial's id ("clip_openclipart: clip on openclipart, trial 0f26d_00001"), in place of MLflow's random one."""
    corpus = os.path.basename(str(cfg.data.corpus).rstrip("/")) or str(cfg.data.corpus)
    trial = tags.get("sslscale.tune_trial_id")
    return (f"{cfg.recipe}: " if cfg.recipe else "") + f"{cfg.method.name} on {corpus}" + (
        f", trial {trial}" if trial else "")


def start_run(uri: str, cfg, tags: dict | None = None) -> str:
    """Create the run (nested under cfg.tracking.parent_run_id if set) with the whole config as flat params."""
    c = client(uri)
    try:
        exp_id = _experiment_id(c, uri, cfg.tracking.experiment)
        all_tags = {**provenance(), **(tags or {})}
        if cfg.tracking.parent_run_id:
            all_tags["mlflow.parentRunId"] = cfg.tracking.parent_run_id
        run = c.create_run(exp_id, run_name=cfg.tracking.run_name or run_name(cfg, all_tags), tags=all_tags)
    except Exception as e:  # noqa: BLE001 - any store failure is one line for the user
        raise SslscaleError(f"cannot create an MLflow run at {shown(uri)} ({type(e).__name__}: {str(e)[:200]}); "
                            f"check tracking.uri or MLFLOW_TRACKING_URI, or set tracking.enabled=false") from None
    run_id = run.info.run_id
    shown_cfg = cfg.to_dict(chosen_method_only=True)  # other methods' sections do not act on the run
    log_params(uri, run_id, flatten(shown_cfg))
    c.log_text(run_id, json.dumps(redact.nested(shown_cfg), indent=2, sort_keys=True), "config.json")
    return run_id


def log_datasets(uri: str, run_id: str, corpora: dict[str, str]) -> None:
    """Each prepared corpus as a dataset input of the run, by context ({"training": corpus folder, "evaluation":
    target folder; MLflow keeps one input per dataset, so a target that is the corpus is logged once): its folder's
    name, a digest of its manifest.json, where it came from (the folder and the
    manifest's source) and its fields' kinds, so MLflow's run page shows what the run read."""
    import hashlib

    from mlflow.entities import Dataset, DatasetInput, InputTag

    from sslscale import storage

    inputs = []
    for context, folder in corpora.items():
        manifest = storage.read_bytes(storage.join(folder, "manifest.json"))
        meta = json.loads(manifest)
        dataset = Dataset(name=os.path.basename(folder.rstrip("/")), digest=hashlib.sha256(manifest).hexdigest()[:12],
                          source_type="s3" if folder.startswith("s3://") else "local",
                          source=json.dumps({"uri": folder, **meta.get("source", {})}),
                          schema=json.dumps({k: v.get("kind") for k, v in meta["fields"].items()}),
                          profile=json.dumps({k: v["samples"] for k, v in meta["splits"].items()}))
        inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", context)]))
    client(uri).log_inputs(run_id, datasets=inputs)


def get_run(uri: str, run_id: str):
    try:
        return client(uri).get_run(run_id)
    except Exception as e:  # noqa: BLE001
        raise SslscaleError(f"no MLflow run {run_id!r} in {shown(uri)} ({type(e).__name__}); check the id and "
                            f"tracking.uri") from None


def set_tags(uri: str, run_id: str, tags: dict) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    client(uri).log_batch(run_id, metrics=_metrics((k, v, now, step) for k, v in metrics.items()))


def log_artifact(uri: str, run_id: str, path: str, artifact_path: str | None = None) -> None:
    client(uri).log_artifact(run_id, path, artifact_path)


@contextlib.contextmanager
def _global_uri(uri: str):
    """MLflow's model API (logging, registering, loading a models:/ URI) reads the global tracking and registry
    URIs; set both to the store for the block, then put back exactly what was there: mlflow's own settings and
    $MLFLOW_TRACKING_URI, $MLFLOW_REGISTRY_URI (which its setters also write)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    before = {"MLFLOW_TRACKING_URI": (mlflow.set_tracking_uri, tracking._tracking_uri),
              "MLFLOW_REGISTRY_URI": (mlflow.set_registry_uri, registry._registry_uri)}
    env = {name: os.environ.get(name) for name in before}
    client(uri)  # a new sqlite store is created under its lock, not by the model API
    for setter, _ in before.values():
        setter(uri)
    try:
        yield
    finally:
        for name, (setter, value) in before.items():
            setter(value)
            if env[name] is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = env[name]


def log_code_model(uri: str, run_id: str, name: str, *, code: str, artifacts: dict, code_paths: list,
                   requirements: list, signature, metadata: dict) -> str:
    """A models-from-code pyfunc model (`code`: the file that calls mlflow.models.set_model) logged to run_id, with
    its artifacts and code paths; returns its URI (models:/<model id>)."""
    import mlflow.pyfunc
    from mlflow.models import Model

    c = client(uri)
    run = c.get_run(run_id)  # the model goes to the run's experiment (Model.log alone picks the active or default)
    model = c.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id, params=run.data.params)
    try:
        with _global_uri(uri), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*An input example was not provided")  # it would run it
            info = Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
                             model_id=model.model_id, python_model=code, artifacts=artifacts, code_paths=code_paths,
                             pip_requirements=requirements, signature=signature, metadata=metadata)
    except BaseException:  # not left PENDING in the Models tab
        best_effort(c.finalize_logged_model, model.model_id, "FAILED")
        raise
    return info.model_uri


def load_logged_model(uri: str, model_uri: str):
    """mlflow.pyfunc.load_model of a models:/ URI (a model id, or a registered name and version) in store `uri`."""
    import mlflow.pyfunc

    with _global_uri(uri):
        return mlflow.pyfunc.load_model(model_uri)


def logged_models(uri: str, run_id: str, name: str = "") -> list:
    """The models logged to run_id that are ready to load (MLflow LoggedModel entities; of `name` only if given),
    newest first."""
    from mlflow.entities import LoggedModelStatus

    c = client(uri)
    exp = c.get_run(run_id).info.experiment_id
    wanted = f"source_run_id = '{run_id}'" + (f" AND name = '{name}'" if name else "")
    found = c.search_logged_models([exp], filter_string=wanted,  # (a status filter matches nothing in 3.17)
                                   order_by=[{"field_name": "creation_time", "ascending": False}])
    return [m for m in found if m.status == LoggedModelStatus.READY]


def register_model(uri: str, run_id: str, name: str) -> tuple[str, int]:
    """Register run_id's newest ready logged model under `name` in the store's own registry (a new version if the
    name exists); returns (name, version). One line when the run has no such model."""
    import mlflow

    models = logged_models(uri, run_id)
    if not models:
        raise SslscaleError(f"run {run_id} has no logged model to register (it did not finish, or logging it "
                            "failed, or it ran before sslscale logged models): register a finished run's")
    with _global_uri(uri):  # the store's registry, and its models:/ source resolved through the store
        version = mlflow.register_model(f"models:/{models[0].model_id}", name)
    return version.name, int(version.version)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status)


def reopen_run(uri: str, run_id: str) -> None:
    """A resumed run is RUNNING again (it was KILLED, FAILED or FINISHED)."""
    client(uri).update_run(run_id, status="RUNNING")


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def log_params(uri: str, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in redact.params(params).items()]
    for i in range(0, len(items), 100):
        client(uri).log_batch(run_id, params=items[i:i + 100])


def child_runs(uri: str, parent_run_id: str) -> list:
    """The runs nested under parent_run_id (any status), oldest first."""
    c = client(uri)
    parent = c.get_run(parent_run_id)
    return c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                         order_by=["attributes.start_time ASC"], max_results=10000)


class MetricBuffer:
    """Rank 0's training metrics, held until a checkpoint covers their step, then logged in one batch.

    Steps at or below the last step already in the store (a previous attempt logged them) are dropped, so the
    store holds each step once. A store that is away keeps the metrics buffered (and carried inside every
    checkpoint, see train._save): one warning says so, training does not wait for it (after a failed call the
    next try is RETRY_S later), and what was held is sent when it answers again."""

    RETRY_S = 10.0

    def __init__(self, uri: str, run_id: str, key: str = "lr", warn: bool = True):
        self.uri, self.run_id, self.key = uri, run_id, key  # `lr` is logged at every step, skipped ones too
        self.pending: list[tuple[int, dict, int]] = []
        self.warned, self.away_since, self.retry_at = not warn, 0.0, 0.0
        self.logged_up_to, self.reachable = 0, False
        self._learn_logged()

    def _learn_logged(self) -> bool:
        """Ask the store which steps it already has (the last one), dropping those from what is pending."""
        ok, points = self._safe(lambda: history(self.uri, self.run_id, self.key))
        if ok:
            self.reachable = True
            self.logged_up_to = max([s for s, _ in points] + [self.logged_up_to])
            self.pending = [p for p in self.pending if p[0] > self.logged_up_to]
        return ok

    def _safe(self, fn) -> tuple[bool, object]:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - tracking must never stop training
            if not self.warned:
                log.warning(f"MLflow at {shown(self.uri)} is not answering ({type(e).__name__}); training goes on and "
                            f"its metrics are kept (and checkpointed) until it is back")
                self.warned = True
            self.away_since = self.away_since or time.time()
            self.retry_at = time.time() + self.RETRY_S
            return False, None
        if self.away_since:
            print(f"MLflow at {shown(self.uri)} answers again after {time.time() - self.away_since:.0f} s; sending the "
                  f"{len(self.pending)} steps held meanwhile", flush=True)
            self.away_since = 0.0
        return True, result

    def add(self, step: int, metrics: dict[str, float]) -> None:
        if step > self.logged_up_to:
            self.pending.append((step, metrics, int(time.time() * 1000)))

    def _next_chunk(self, up_to: int, limit: int = 900) -> list:
        chunk, size = [], 0
        for p in self.pending:
            if p[0] > up_to or (chunk and size + len(p[1]) > limit):
                break
            chunk.append(p)
            size += len(p[1])
        return chunk

    def restore(self, pending: list) -> None:
        """Take back metrics a checkpoint carried (steps not yet in the store), in step order."""
        known = {p[0] for p in self.pending}
        extra = [tuple(p) for p in pending if p[0] > self.logged_up_to and p[0] not in known]
        self.pending = sorted(self.pending + extra, key=lambda p: p[0])

    def flush(self, up_to: int, force: bool = False) -> bool:
        """Log every pending step <= up_to, up to ~900 metrics per call (MLflow takes 1000); False (and kept) if
        the store is away (or was, less than RETRY_S ago)."""
        if time.time() < self.retry_at and not force:
            return False
        if not self.reachable and not self._learn_logged():  # away when this buffer started: ask first
            return False
        while ready := self._next_chunk(up_to):
            batch = _metrics((k, v, ts, s) for s, m, ts in ready for k, v in m.items())
            ok, _ = self._safe(lambda: client(self.uri).log_batch(self.run_id, metrics=batch))
            if not ok:
                return False
            last = ready[-1][0]
            self.pending = [p for p in self.pending if p[0] > last]
            self.logged_up_to = max(self.logged_up_to, last)
        return True


def plot_curves(uri: str, run_id: str, out_png: str) -> str:
    """Loss, learning rate and the health metrics against the step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("loss", "loss"), ("lr", "learning rate"), ("health/rankme", "effective rank (RankMe)"),
            ("health/std", "std of normalised embeddings")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, (key, title) in zip(axes, keys):
        points = history(uri, run_id, key)
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_spectrum(uri: str, run_id: str, out_png: str) -> str | None:
    """The run's stepwise spectrum (`spectrum/eig_<i>` and `spectrum/erank` against the step, plots.spectrum_plot)
    as one PNG; None when the run logged none (train.spectrum_k=0)."""
    from sslscale.plots import spectrum_plot

    erank = history(uri, run_id, "spectrum/erank")
    if not erank:
        return None
    keys = sorted((k for k in get_run(uri, run_id).data.metrics if re.fullmatch(r"spectrum/eig_\d+", k)),
                  key=lambda k: int(k.rpartition("_")[2]))
    curves = [dict(history(uri, run_id, k)) for k in keys]  # step -> value, one per rank-ordered eigenvalue
    steps = [s for s, _ in erank if all(s in c for c in curves)]
    return spectrum_plot(steps, [[c[s] for c in curves] for s in steps], [dict(erank)[s] for s in steps], out_png)


# The MLflow UI (3.17) opens in its GenAI workspace (traces, judges, prompts; runs as "Evaluation runs") unless the
# page's URL says `workflowType=machine_learning` (or the browser remembers a switch in localStorage). Its bundle
# ignores the experiment's `mlflow.experimentKind` tag for this choice; the tag is still set, as the kind other MLflow
# clients and versions read.
UI_KIND_TAG, UI_KIND_ML = "mlflow.experimentKind", "custom_model_development"


def ui_url(base: str, experiment_id: str = "", run_id: str = "", models: bool = False) -> str:
    """The MLflow UI page of an experiment (or of one of its runs, or its Models tab; no experiment: the home
    page), opened in the classic ML workspace."""
    page = f"/experiments/{experiment_id}" if experiment_id else "/"
    if experiment_id and run_id:
        page += f"/runs/{run_id}"
    elif experiment_id and models:
        page += "/models"
    return f"{base.rstrip('/')}/#{page}?workflowType=machine_learning"


def experiment_urls(uri: str, base: str, limit: int = 50) -> list[tuple[str, str]]:
    """(name, ui_url) of the active experiments in the store, newest first; [] for a store not created yet or
    one that does not answer (so `sslscale ui` starts at once on a new store)."""
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        return []
    try:
        exps = client(uri).search_experiments(max_results=limit, order_by=["creation_time DESC"])
    except Exception:  # noqa: BLE001 - listing is a convenience; the UI itself reports a broken store
        return []
    return [(e.name, ui_url(base, e.experiment_id)) for e in exps]
