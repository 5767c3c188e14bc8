"""An exported encoder as an MLflow logged model (issue 29 item 5): logged to the run's experiment from the real
safetensors file, registered (a new version each time), and loaded back through MLflow's own API with the vectors
`sslscale embed` gives. Against a real sqlite store; the Models tab in headless Chromium is in test_sweep.py (long)."""
import os

import mlflow
import numpy as np
import pandas as pd
import pytest

from sslscale.config import Config
from sslscale.data.sources.text import train_tokenizer
from sslscale.errors import SslscaleError
from sslscale.evaluation import mlflow_model
from sslscale.evaluation.embed import Embedder
from sslscale.runtime import tracking
from sslscale.training.export import save_encoder

LINES = ["a cat on a mat", "a dog in the night", "a bird on a tree"]


def _clip_export(tmp_path) -> str:
    from test_clip import _model

    model = _model(seed=3).eval()
    tok = train_tokenizer(LINES * 3, 300)
    return save_encoder(model.encoder, str(tmp_path / "c.encoder.safetensors"), method=model,
                        tokenizer=tok.to_str().encode())


def _direct(path: str, kind: str, items: list) -> np.ndarray:
    model = Embedder(path, kind)
    return model(np.stack([model.prepare(i) for i in items]))


def test_a_clip_export_logs_registers_and_loads_back_through_mlflow(tmp_path, monkeypatch):
    from captions import captioned_folder

    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder (MLflow's default ./mlruns)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")  # a user's own setting survives
    uri = f"sqlite:///{tmp_path}/store/mlruns.db"
    (tmp_path / "store").mkdir()
    run_id = tracking.start_run(uri, Config())
    path = _clip_export(tmp_path)
    model_uri = mlflow_model.log(uri, run_id, path)
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db" and not (tmp_path / "elsewhere.db").exists()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert "elsewhere" not in mlflow.get_tracking_uri()  # nothing of it stays behind in mlflow's own setting
    [logged] = tracking.logged_models(uri, run_id)
    assert model_uri == f"models:/{logged.model_id}" and logged.name == "encoder"
    assert logged.experiment_id == tracking.get_run(uri, run_id).info.experiment_id  # the run's, not Default
    assert sorted(os.listdir(tmp_path)) == ["c.encoder.safetensors", "store"]

    pictures = sorted(str(p) for p in captioned_folder(tmp_path / "pics", 4).glob("*.png"))
    loaded = tracking.load_logged_model(uri, model_uri)
    np.testing.assert_array_equal(loaded.predict(pd.DataFrame({"path": pictures})),
                                  _direct(path, "image", pictures))
    np.testing.assert_array_equal(loaded.predict(pd.DataFrame({"text": LINES})), _direct(path, "text", LINES))
    assert loaded.metadata.metadata["sslscale.reads"] == ["image", "text"]
    with pytest.raises(SslscaleError, match="one column, `path` .* or `text`"):
        loaded.predict(pd.DataFrame({"paths": pictures}))

    stored = logged.artifact_location.removeprefix("file://")  # runs anywhere with its requirements installed
    assert os.path.isfile(os.path.join(stored, "code", "sslscale", "evaluation", "embed.py"))
    pins = open(os.path.join(stored, "requirements.txt")).read().split()
    assert "torch" in " ".join(pins) and not any("+" in p for p in pins)  # no local label (torch's +cpu)

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path}/other-registry.db")  # the store's own, still
    assert tracking.register_model(uri, run_id, "clip tiny") == ("clip tiny", 1)
    assert tracking.register_model(uri, run_id, "clip tiny") == ("clip tiny", 2)  # a new version, not an error
    again = tracking.load_logged_model(uri, "models:/clip tiny/2")
    np.testing.assert_array_equal(again.predict(pd.DataFrame({"text": LINES[:1]})), _direct(path, "text", LINES[:1]))

    bare = tracking.start_run(uri, Config())
    with pytest.raises(SslscaleError, match=f"run {bare} has no logged model to register"):
        tracking.register_model(uri, bare, "clip tiny")
    # a sweep's --register: one line, after the sweep's results are saved, saying how to retry
    from sslscale.sweeps.tune import register_best

    state = {"name": "s", "register": "clip tiny", "config": {"tracking": {"uri": uri}}}
    with pytest.raises(SslscaleError, match="^sweep s has no finished trial with a run to register$"):
        register_best(state, "")
    with pytest.raises(SslscaleError, match=r"^sweep s finished, but registering its winner failed \(.*no logged model"
                                            r".*\): retry with `sslscale sweep --resume s --register 'clip tiny'`$"):
        register_best(state, bare)


def test_a_text_encoder_reads_text_and_an_image_encoder_files(tmp_path):
    from sslscale.encoders.resnet import ResNet
    from sslscale.encoders.text import TextTransformer

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    run_id = tracking.start_run(uri, Config())
    tok = train_tokenizer(LINES * 3, 300)
    text = save_encoder(TextTransformer(vocab_size=300, max_length=8, dim=8, depth=1, heads=2).eval(),
                        str(tmp_path / "t.encoder.safetensors"), tokenizer=tok.to_str().encode())
    loaded = tracking.load_logged_model(uri, mlflow_model.log(uri, run_id, text))
    np.testing.assert_array_equal(loaded.predict(pd.DataFrame({"text": LINES})), _direct(text, "text", LINES))
    with pytest.raises(SslscaleError, match="this model embeds text: pass its documents in a `text` column"):
        loaded.predict(pd.DataFrame({"path": ["x.png"]}))

    image = save_encoder(ResNet(in_channels=1, image_size=8, widths=(4,), depths=(1,)).eval(),
                         str(tmp_path / "r.encoder.safetensors"))
    loaded = tracking.load_logged_model(uri, mlflow_model.log(uri, run_id, image))
    assert [m.name for m in tracking.logged_models(uri, run_id)] == ["encoder", "encoder"]
    with pytest.raises(SslscaleError, match="cannot decode image .*missing.png"):
        loaded.predict(pd.DataFrame({"path": [str(tmp_path / "missing.png")]}))
