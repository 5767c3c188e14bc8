"""An exported encoder as an MLflow logged model (models from code): shown under the run's and the experiment's
Models, registrable, and loaded back with MLflow's own API.

    model = mlflow.pyfunc.load_model("models:/<model id>")          # or "models:/<registered name>/<version>"
    model.predict(pd.DataFrame({"path": ["cat.png", "dog.png"]}))   # pictures (or audio files) -> (n, D) float32
    model.predict(pd.DataFrame({"text": ["a cat", "a dog"]}))       # sentences, for a text encoder or CLIP

The weights stay in the run's `encoder.safetensors` (no pickle): the logged model holds that file as its artifact
`encoder`, this file as its code, and sslscale's package as its code path, so any environment with the pinned
requirements loads it. Vectors are what `sslscale embed` writes for the same inputs (evaluation/embed.py's
Embedder): an encoder's features, or for an image-text model the joint embedding of the tower that reads the
column's kind. This module is run by MLflow when the model loads (`set_model` below) and imported by sslscale to
log one (`log`).
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import set_model

NAME = "encoder"  # the logged model's name in the run
BATCH = 256  # inputs embedded at once
COLUMNS = ("path", "text")  # files of the encoder's own kind (pictures, audio); documents
REQUIREMENTS = ("torch", "safetensors", "tokenizers", "numpy", "pillow", "pyarrow", "pandas", "soundfile", "soxr",
                "mlflow")


class EncoderModel(mlflow.pyfunc.PythonModel):
    """model_input: a DataFrame with a `path` column (files of pictures or audio) or a `text` column (documents);
    returns float32 vectors (n, D), one per row, in order. Bad input: SslscaleError, one line."""

    def load_context(self, context):
        from sslscale.evaluation.embed import Embedder

        first = Embedder(context.artifacts["encoder"])  # its own kind; a CLIP export reads text too
        self.path, self.models = context.artifacts["encoder"], {first.kind: first}

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from sslscale.errors import SslscaleError
        from sslscale.evaluation.embed import Embedder, embed_items

        columns = [c for c in COLUMNS if c in getattr(model_input, "columns", ())]
        if len(columns) != 1:
            raise SslscaleError("pass a DataFrame with one column, `path` (files) or `text` (documents)")
        own = next(iter(self.models.values()))
        kind = "text" if columns == ["text"] else own.kind
        if kind not in own.readable or (columns == ["path"] and kind == "text"):
            column, what = ("text", "documents") if own.kind == "text" else ("path", f"{own.kind} files' paths")
            raise SslscaleError(f"this model embeds {own.kind}: pass its {what} in a `{column}` column")
        if kind not in self.models:
            self.models[kind] = Embedder(self.path, kind)
        items = list(enumerate(str(item) for item in model_input[columns[0]].tolist()))
        return embed_items(self.models[kind], items, BATCH, "fail")[1]  # batch by batch, a bad file: one line


set_model(EncoderModel())


def requirements() -> list[str]:
    """The pinned versions of what loading needs, as installed here (without local labels such as torch's +cpu,
    which no package index serves; a package not installed is left out)."""
    found = []
    for name in REQUIREMENTS:
        try:
            found.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def signature():
    """One of two optional string columns in, a (n, D) float32 array out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([ColSpec("string", c, required=False) for c in COLUMNS]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]))


def log(uri: str, run_id: str, encoder_path: str) -> str:
    """Log the local exported file `encoder_path` as run `run_id`'s model; returns the model's URI
    (models:/<model id>)."""
    from sslscale.evaluation.embed import Embedder
    from sslscale.runtime import tracking
    from sslscale.training.export import read_spec

    here = Path(__file__).resolve()
    metadata = {"sslscale.encoder": read_spec(encoder_path), "sslscale.reads": sorted(Embedder(encoder_path).readable)}
    return tracking.log_code_model(uri, run_id, NAME, code=str(here), artifacts={"encoder": encoder_path},
                                   code_paths=[str(here.parents[1])],  # the sslscale package
                                   requirements=requirements(), signature=signature(), metadata=metadata)


def logged(uri: str, run_id: str) -> bool:
    """Whether run_id has its encoder model already (a resumed finished run logs it once)."""
    from sslscale.runtime import tracking

    return bool(tracking.logged_models(uri, run_id, NAME))
