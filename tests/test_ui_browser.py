"""sslscale's links open the MLflow UI in its classic ML workspace (MLflow 3.17 opens in its GenAI one otherwise).

The browser check of a real sweep (its parent run listing the trials nested under it) is in test_sweep.py.
"""
from sslscale import cli
from sslscale.config import Config
from sslscale.runtime import tracking


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
