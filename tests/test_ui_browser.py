"""What a new user sees in the MLflow UI: sslscale's links open the classic ML workspace (MLflow 3.17 opens in its
GenAI one otherwise), where a sweep's parent run lists its trials nested under it.

The browser test is `long` (make test-long, which installs Chromium with `make browser`); the URL and tag checks
are fast. SSLSCALE_SCREENSHOTS=1 saves the picture into docs/img/ for the user guide.
"""
import os
import pathlib

import pytest

import browser
from mlflow_server import MlflowServer
from sslscale import cli, tracking
from sslscale.config import Config

DOCS_IMG = pathlib.Path(__file__).parents[1] / "docs" / "img"


def test_ui_url_opens_the_ml_workspace():
    assert tracking.ui_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert tracking.ui_url("http://h:1", "7", "abc") == \
        "http://h:1/#/experiments/7/runs/abc?workflowType=machine_learning"
    assert tracking.ui_url("http://h:1") == "http://h:1/#/?workflowType=machine_learning"


def test_experiments_are_tagged_as_classic_ml(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    run_id = tracking.start_run(uri, Config())
    c = tracking.client(uri)
    exp = c.get_experiment(tracking.get_run(uri, run_id).info.experiment_id)
    assert exp.tags[tracking.UI_KIND_TAG] == "custom_model_development"
    c.delete_experiment_tag(exp.experiment_id, tracking.UI_KIND_TAG)  # an experiment made before the tag existed
    tracking.start_run(uri, Config())
    assert c.get_experiment(exp.experiment_id).tags[tracking.UI_KIND_TAG] == "custom_model_development"
    c.set_experiment_tag(exp.experiment_id, tracking.UI_KIND_TAG, "genai_development")  # a user's choice stays
    tracking.start_run(uri, Config())
    assert c.get_experiment(exp.experiment_id).tags[tracking.UI_KIND_TAG] == "genai_development"


def test_ui_command_prints_ml_links_and_starts_without_job_runner(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli.os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    new = f"sqlite:///{tmp_path}/new.db"
    assert cli.main(["ui", "--tracking-uri", new, "--port", "5123"]) == 0
    assert "at http://127.0.0.1:5123/#/?workflowType=machine_learning" in capsys.readouterr().out
    assert not (tmp_path / "new.db").exists()  # a new store is not created (nor migrated) just to list it
    argv, env = calls[-1]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and argv[argv.index("--backend-store-uri") + 1] == new

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    exp_id = tracking.get_run(uri, tracking.start_run(uri, Config())).info.experiment_id
    assert cli.main(["ui", "--tracking-uri", uri, "--port", "5123"]) == 0
    assert f"sslscale: {tracking.ui_url('http://127.0.0.1:5123', exp_id)}" in capsys.readouterr().out


@pytest.mark.long
@pytest.mark.timeout(300)
def test_a_new_user_sees_the_sweep_nested_in_the_ml_runs_table(tmp_path):
    assert browser.available(), "no headless Chromium: `make browser` installs chromium and chromium-driver"
    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    try:
        parent_name, trials = "sweep-simclr-temperature", ["trial-0-temperature-0.1", "trial-1-temperature-0.5"]
        parent = tracking.start_run(server.uri, Config().override([f"tracking.run_name={parent_name}"]))
        for i, name in enumerate(trials):
            cfg = Config().override([f"tracking.parent_run_id={parent}", f"tracking.run_name={name}"])
            tracking.start_run(server.uri, cfg, tags={"sslscale.tune_trial_id": f"trial_{i}"})
        url = tracking.ui_url(server.uri, tracking.get_run(server.uri, parent).info.experiment_id)
        ml_workspace = ["Run Name", "Model registry"]  # the runs table; the registry is in the ML sidebar only

        collapsed = browser.open_page(url, [parent_name, "3 matching runs", *ml_workspace])
        assert not any(t in collapsed for t in trials), "the trials should be rows nested under the sweep"

        shot = DOCS_IMG / "ui-runs-table.png" if os.environ.get("SSLSCALE_SCREENSHOTS") == "1" else \
            tmp_path / "ui-runs-table.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        text = browser.open_page(url, [parent_name, *trials, *ml_workspace], screenshot=str(shot), expand_nested=True)
        assert "Evaluation runs" not in text and "Judges" not in text, "the GenAI workspace opened"
        assert shot.stat().st_size > 10_000
    finally:
        server.stop()
