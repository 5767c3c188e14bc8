"""sslscale: distributed self-supervised pretraining.

Ray Data streams a sharded unlabeled corpus into DeepSpeed-wrapped encoders under Ray Train; MLflow tracks every
run and its transfer scores. Public API: `Config`, `pretrain`, `sweep`, `evaluate`, `load_encoder`, `save_encoder`,
`embed`.
Heavy dependencies (Ray, DeepSpeed) load only when the function that needs them is called.
"""
from sslscale import timeline  # noqa: F401 - first: it marks when this process began importing sslscale
from sslscale.config import Config
from sslscale.errors import SslscaleError

__all__ = ["Config", "SslscaleError", "embed", "evaluate", "load_encoder", "pretrain", "save_encoder", "sweep"]


def pretrain(cfg, **kwargs):
    from sslscale.pretraining import pretrain as _pretrain

    return _pretrain(cfg, **kwargs)


def sweep(cfg, space, **kwargs):
    """A Ray Tune sweep of `pretrain` over `space` (KEY=DIST strings) -> SweepResult; see sslscale.sweeps.tune.sweep."""
    from sslscale.sweeps.tune import sweep as _sweep

    return _sweep(cfg, space, **kwargs)


def evaluate(encoder, tcfg, **kwargs):
    from sslscale.evaluation.transfer import evaluate as _evaluate

    return _evaluate(encoder, tcfg, **kwargs)


def embed(encoder, source, out, **kwargs):
    """Embed pictures, lines of text or a prepared corpus with an exported encoder into a Parquet file; see
    sslscale.evaluation.embed.embed."""
    from sslscale.evaluation.embed import embed as _embed

    return _embed(encoder, source, out, **kwargs)


def load_encoder(path):
    from sslscale.training.export import load_encoder as _load

    return _load(path)


def save_encoder(encoder, path):
    from sslscale.training.export import save_encoder as _save

    return _save(encoder, path)
