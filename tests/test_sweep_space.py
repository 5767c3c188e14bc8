"""A sweep's space, ranking and command as plain functions, and the CLI's one-line errors before any trial starts."""
import math

import pytest

from pipelines import load_recipe, load_sweep
from sslscale.errors import SslscaleError
from sslscale.sweeps import report, space
from sslscale.sweeps.tune import MAX_CONCURRENT, concurrency
from test_cli import one_line_error, run


def test_parse_every_kind():
    s = space.parse(["method.simclr.temperature=loguniform:0.05:0.5", "optim.lr=grid:1e-3,2e-3",
                     "model.widths=choice:8,16|16,32", "optim.warmup_steps=randint:0:10",
                     "data.crop_min_scale=uniform:0.1:0.5"])
    assert s["method.simclr.temperature"].values == (0.05, 0.5) and s["method.simclr.temperature"].log
    assert s["optim.lr"].values == ("1e-3", "2e-3")
    assert s["model.widths"].values == ("8,16", "16,32")  # `|` separates values that hold commas
    assert s["optim.warmup_steps"].values == (0, 10)
    space.check(s, load_recipe("debug"))


@pytest.mark.parametrize("item, words", [
    ("optim.lr", "is not KEY=DIST"),
    ("optim.lr=normal:0:1", "is not KEY=DIST"),
    ("optim.lr=uniform:1", "uniform:LOW:HIGH"),
    ("optim.lr=uniform:0.5:0.1", "LOW < HIGH"),
    ("optim.lr=loguniform:0:1", "0 < LOW < HIGH"),
    ("optim.lr=choice:1e-3,1e-3", "distinct"),
])
def test_bad_spec_is_one_line(item, words):
    with pytest.raises(SslscaleError, match=words):
        space.parse([item])


@pytest.mark.parametrize("items, words", [
    (["optim.lrr=uniform:0.1:0.2"], "unknown config key 'optim.lrr'"),
    (["method.name=choice:simclr,simclrr"], "the value simclrr is refused"),
    (["data.flip=uniform:0.5:1.5"], "the value 1.5 is refused"),
    (["optim.warmup_steps=uniform:1:9"], "use randint"),
    (["method.name=uniform:0:1"], "use choice"),
    (["optim.lr=loguniform:1e-4:1e-2", "optim.lr=uniform:0.1:0.2"], "given twice"),
    (["tracking.uri=choice:a,b"], "the same for every trial"),
    (["train.steps=randint:5:10"], "the same for every trial"),
    (["data.corpus=choice:digits,fmnist"], "the same for every trial"),
    ([], "no search space"),
])
def test_space_checked_against_the_validator(items, words):
    with pytest.raises(SslscaleError, match=words):
        space.check(space.parse(items), load_recipe("debug"))


def test_grid_with_optuna_and_searched_key_also_fixed():
    with pytest.raises(SslscaleError, match="grid: cannot be used with --search optuna"):
        space.check(space.parse(["optim.lr=grid:1e-3,2e-3"]), load_recipe("debug"), "optuna")
    with pytest.raises(SslscaleError, match="both searched"):
        space.check(space.parse(["optim.lr=grid:1e-3,2e-3"]), load_recipe("debug"), overrides=["optim.lr=1e-3"])


def test_default_point_is_the_recipes_own_values():
    base = load_recipe("simclr_fmnist")
    s = space.parse(load_sweep("simclr_fmnist_sweep")["space"])
    assert space.default_point(s, base) == {"method.simclr.temperature": 0.2, "data.crop_min_scale": 0.3,
                                            "optim.lr": 2e-3}
    assert space.default_point(space.parse(["optim.lr=uniform:0.1:0.2"]), base) is None  # outside: no default trial
    assert space.default_point(space.parse(["method.name=choice:vicreg,simclr"]), base) == {"method.name": "simclr"}
    applied = space.apply(base, {"model.widths": "8,16,32", "optim.lr": 0.01})
    assert applied.model.widths == (8, 16, 32) and applied.optim.lr == 0.01


def _trial(tid, status, score, signal):
    return {"trial_id": tid, "run_id": "r" + tid, "params": {"optim.lr": 0.001}, "status": status, "score": score,
            "signal": signal, "last_step": 10, "curve": [], "scores": {}, "error": ""}


def test_rank_puts_scored_trials_first_then_stopped_by_signal():
    trials = [_trial("a", "stopped", math.nan, 9.0), _trial("b", "finished", 0.7, 3.0),
              _trial("c", "error", math.nan, 20.0), _trial("d", "finished", 0.8, 1.0),
              _trial("e", "stopped", math.nan, 12.0), _trial("f", "stopped", math.nan, math.nan)]
    assert [t["trial_id"] for t in report.rank(trials)] == ["d", "b", "e", "a", "f", "c"]
    # min ranks the scores low first; the unscored still by the highest signal (the scheduler maximises it)
    assert [t["trial_id"] for t in report.rank(trials, "min")] == ["b", "d", "e", "a", "f", "c"]
    table = report.markdown(report.rank(trials), ["optim.lr"], "transfer/x/knn_top1", "health/rankme")
    assert table.splitlines()[2].startswith("| 1 | d | finished | 0.8 |")
    assert report.to_csv(trials, ["optim.lr"], "m", "s").splitlines()[0].startswith("rank,trial,status,m,s")


def test_retrain_command_runs_the_winner_at_the_recipes_length():
    cmd = report.retrain_command("simclr_fmnist", ["train.steps=150", "data.cpus=2"],
                                       {"method.simclr.temperature": 0.1, "model.widths": "8,16"})
    assert cmd == "sslscale pretrain --recipe simclr_fmnist data.cpus=2 method.simclr.temperature=0.1 model.widths=8,16"
    assert space.typed({"model.widths": "8,16", "optim.lr": "2e-3"}) == {"model.widths": "8,16", "optim.lr": 0.002}


def test_concurrency_is_as_many_whole_trials_as_fit_at_once(capsys):
    """Each trial holds its driver, its training workers and its Ray Data task at the same time."""
    cfg = load_recipe("simclr_fmnist")  # driver 0.25 + 2 workers x 1 CPU + a data task of 1 = 3.25 CPUs a trial
    node = lambda cpus, **more: [({"CPU": cpus, **more}, 1)]  # noqa: E731
    assert concurrency(cfg, 0, "sqlite:////x/mlruns.db", node(64)) == 1  # one sqlite writer
    assert concurrency(cfg, 0, "http://mlflow:5000", node(4)) == 1  # this machine: 2 cores + 2 logical
    assert concurrency(cfg, 0, "http://mlflow:5000", node(13)) == 4
    assert concurrency(cfg, 0, "http://mlflow:5000", [({"CPU": 3}, 4)]) == 3  # a trial's bundles span nodes
    assert concurrency(cfg, 3, "http://mlflow:5000", node(13)) == 3  # asked for
    assert concurrency(cfg, 5, "http://mlflow:5000", node(8)) == 2  # asked for more than fit: capped, said
    assert "--max-concurrent 5: only 2 trial(s) of 1 x {'CPU': 0.25} + 2 x {'CPU': 1.0} + 1 x {'CPU': 1.0} fit at " \
           "once on 1 node of CPU 8; running 2 at a time" in capsys.readouterr().out
    assert concurrency(cfg, 0, "http://mlflow:5000", [({"CPU": 4}, math.inf)]) == MAX_CONCURRENT  # autoscaled
    gpu_node = [({"CPU": 8, "GPU": 4}, 2)]  # GPUs count: 2 workers of 1 GPU a trial
    assert concurrency(cfg, 0, "http://mlflow:5000", gpu_node, use_gpu=True) == 4
    cfg.train.driver_resource = "sslscale_driver:1"  # a head node's custom resource costs no CPU
    assert concurrency(cfg, 0, "http://mlflow:5000", node(0, sslscale_driver=8) + node(12)) == 4
    with pytest.raises(SslscaleError, match="needs an MLflow server"):
        concurrency(cfg, 2, "sqlite:////x/mlruns.db", node(64))


@pytest.mark.parametrize("args, words", [
    (["--space", "optim.lr=between:1:2"], "is not KEY=DIST"),
    (["--space", "optim.lr=uniform:1e-3:2e-3", "optim.lr=1e-3"], "both searched (--space) and fixed"),
    (["--resume", "../../etc"], "sweep name '../../etc'"),
])
def test_cli_errors_before_any_trial_starts(tmp_path, args, words):
    proc = run("sweep", "--recipe", "debug_sweep", *args, cwd=tmp_path)
    one_line_error(proc, words)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


@pytest.mark.parametrize("space_items, kwargs, overrides, words", [
    (["method.name=choice:simclr,nope"], {}, [], "the value nope is refused"),
    (["optim.lr=grid:1e-3,2e-3"], {"search": "optuna"}, [], "grid: cannot be used with --search optuna"),
    (["optim.lr=grid:1e-3,2e-3"], {"max_concurrent": 2}, [], "needs an MLflow server"),
    (["optim.lr=grid:1e-3,2e-3"], {}, ["transfer.enabled=false"], "transfer.enabled"),
    (["optim.lr=grid:1e-3,2e-3"], {"metric": "transfer/fmnist/knn_top1"}, [],
     "a score the trials log: transfer/digits/knn_top1, transfer/digits/linear_top1 "),
    (["optim.lr=grid:1e-3,2e-3"], {"metric": "transfer/digits/finetune_top1"}, ["transfer.label_fractions=0.1,1"],
     "transfer/digits/knn_top1, transfer/digits/linear_top1, transfer/digits/knn_top1/frac0.1, "),
    (["optim.lr=grid:1e-3,2e-3"], {"name": "../x"}, [], "sweep name '../x'"),
    (["optim.lr=grid:1e-3,2e-3"], {}, ["transfer.target=/no/such/target"], "corpus '/no/such/target' is neither"),
])
def test_sweep_refuses_before_ray_starts(tmp_path, monkeypatch, data_root, space_items, kwargs, overrides, words):
    from sslscale.sweeps import tune

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSLSCALE_DATA", data_root)
    with pytest.raises(SslscaleError, match=words):
        tune.sweep(load_recipe("debug").override(overrides), space_items, **kwargs)
    with pytest.raises(SslscaleError, match="no sweep 'gone'"):
        tune.resume("gone")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()


def test_a_sweep_file_that_fails_costs_one_warning_not_the_sweep(caplog):
    """artifacts._safe: a plot that raises is named in one warning and the sweep goes on (its logger was
    once shadowed by the function `log`, so the warning itself raised)."""
    from sslscale.sweeps import artifacts

    def broken_plot():
        raise ValueError("no finished trial")

    assert artifacts._safe(broken_plot) is None
    assert "sweep artifact broken_plot not written (ValueError: no finished trial)" in caplog.text


def test_a_sweep_saved_before_the_modules_moved_is_refused_in_one_line(tmp_path, monkeypatch):
    """Tune's state is pickled, and pickles name modules by path: a sweep saved before 0.1's layers (sslscale.tune,
    now sslscale.sweeps.tune) cannot be restored, and says so instead of a traceback from inside Tune."""
    import json

    import ray.tune

    from sslscale.config import Config
    from sslscale.errors import SslscaleError
    from sslscale.sweeps import artifacts, tune

    folder = tmp_path / "sweeps" / "old"
    folder.mkdir(parents=True)
    cfg = Config().override([f"tracking.uri=sqlite:///{tmp_path}/mlruns.db"])
    (folder / artifacts.STATE).write_text(json.dumps({"config": cfg.to_dict(), "parent": "p", "space": [],
                                                      "name": "old", "metric": "transfer/digits/knn_top1",
                                                      "driver_resource": "CPU:0.25"}))

    def restore(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'sslscale.tune'", name="sslscale.tune")

    monkeypatch.setattr(ray.tune.Tuner, "can_restore", staticmethod(lambda path: True))
    monkeypatch.setattr(ray.tune.Tuner, "restore", staticmethod(restore))
    monkeypatch.setattr(tune, "ensure_ray", lambda **kw: None)
    with pytest.raises(SslscaleError, match="sweep 'old' was saved by an sslscale whose module sslscale.tune has "
                                            "since moved: its Tune state cannot be read; start it again"):
        tune.resume("old", str(tmp_path))
