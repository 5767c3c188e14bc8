"""Secrets never reach MLflow params, tags or printed lines (docs/design.md's redaction rule), checked on the rule
itself and on a real run's params, config.json and command tag in a real sqlite store."""
import json

import mlflow

from sslscale import redact
from sslscale.config import Config
from sslscale.runtime import tracking


def test_whole_segments_decide_what_is_secret():
    """token, secret, password, api_key, access_key as whole segments are secret; tokenizer and max_tokens are not."""
    for name in ("tracking.token", "RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "db-password", "openai.api_key",
                 "x.apikey", "aws_access_key_id", "PG_PASSWORD"):
        assert redact.is_secret(name), name
    for name in ("data.tokenizer", "train.max_tokens", "data.cpus", "method.temperature", "keyboard", "secretary"):
        assert not redact.is_secret(name), name


def test_uri_passwords_and_command_lines_are_hidden():
    """A URI's password, --token X, --api-key=X and NAME=X overrides with a secret name show as ***."""
    assert redact.scrub("postgresql://mlflow:hunter2@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact.scrub("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    shown = redact.argv(["sslscale", "pretrain", "--token", "abc", "--api-key=def", "tracking.token=ghi",
                         "data.tokenizer=bpe", "tracking.uri=http://u:pw@host:5000"])
    assert shown == ["sslscale", "pretrain", "--token", "***", "--api-key=***", "tracking.token=***",
                     "data.tokenizer=bpe", "tracking.uri=http://u:***@host:5000"]


def test_a_real_run_logs_no_secret(tmp_path, monkeypatch):
    """params, config.json and the command tag of a real MLflow run carry no password or token."""
    monkeypatch.setattr("sys.argv", ["sslscale", "pretrain", "--token", "s3cr3t-argv"])
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cfg = Config()
    cfg.tracking.experiment = "redact"
    cfg.train.storage = "s3://user:s3cr3t-uri@bucket/runs"
    run_id = tracking.start_run(uri, cfg)
    tracking.log_params(uri, run_id, {"sweep.api_key": "s3cr3t-param", "data.tokenizer": "bpe"})
    run = mlflow.MlflowClient(uri).get_run(run_id)
    with open(mlflow.MlflowClient(uri).download_artifacts(run_id, "config.json", str(tmp_path))) as f:
        config = json.load(f)
    everything = json.dumps([run.data.params, run.data.tags, config])
    assert "s3cr3t" not in everything
    assert run.data.params["data.tokenizer"] == "bpe" and run.data.params["sweep.api_key"] == "***"
    assert run.data.params["train.storage"] == "s3://user:***@bucket/runs"
    assert config["train"]["storage"] == "s3://user:***@bucket/runs" and config["train"]["steps"] == 500
