"""Sweep plots over plain trial dicts (a realistic sweep and its edge cases) and the embedding map on digits."""
import math

import pytest
import torch
from PIL import Image

from sslscale.encoders import build_encoder
from sslscale.errors import SslscaleError
from sslscale.evaluation.transfer import _project, embedding_map
from sslscale.plots import _normalise, health_overlay, parallel_coordinates, score_vs_params

KEYS, LOG_KEYS = ["optim.lr", "method.simclr.temperature", "method.name"], ("optim.lr",)
METRIC = "transfer/digits/knn_top1"


def _trial(i, lr, temperature, name, score, status="finished", steps=40, curve=True):
    curve = [(s, 2.0 + 6.0 * (1 - math.exp(-s / (10 + 5 * i)))) for s in range(0, steps + 1, 5)] if curve else []
    params = {"optim.lr": lr, "method.name": name, "data.batch_size": 64}
    if temperature is not None:
        params["method.simclr.temperature"] = temperature
    return {"trial_id": f"train_fn_9f3a1_{i:05d}", "params": params, "score": score, "status": status,
            "curve": curve, "last_step": steps}


def sweep():
    """Six trials: numeric and categorical keys, one stopped by ASHA and one failed (neither has a score), one with
    an empty curve, one without method.simclr.temperature (a method that has none)."""
    return [_trial(0, 3e-3, 0.1, "simclr", 0.81), _trial(1, 1e-3, 0.2, "simclr", 0.74),
            _trial(2, 3e-4, 0.5, "simclr", math.nan, status="stopped", steps=10),
            _trial(3, 1e-2, None, "byol", 0.86), _trial(4, 2e-3, 0.07, "moco", 0.78, curve=False),
            _trial(5, 5e-3, 0.1, "moco", math.nan, status="error", steps=15)]


def _check_png(path, min_size=(300, 200)):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size


PLOTS = {"score_vs_params": lambda t, out: score_vs_params(t, KEYS, METRIC, out, log_keys=LOG_KEYS),
         "parallel_coordinates": lambda t, out: parallel_coordinates(t, KEYS, METRIC, out, log_keys=LOG_KEYS),
         "health_overlay": lambda t, out: health_overlay(t, "health/rankme", out)}
EDGES = {"sweep": sweep(), "one_trial": sweep()[:1], "all_nan": [dict(t, score=math.nan) for t in sweep()],
         "empty_curves": [dict(t, curve=[]) for t in sweep()[:2]],
         "equal_values": [dict(t, params={"optim.lr": 1e-3, "method.name": "simclr"}) for t in sweep()[:3]]}


@pytest.mark.parametrize("case", EDGES)
@pytest.mark.parametrize("plot", PLOTS)
def test_sweep_plots_write_a_png(plot, case, tmp_path):
    out = str(tmp_path / f"{plot}.png")
    assert PLOTS[plot](EDGES[case], out) == out
    _check_png(out)


def test_parallel_axes_normalise_log_categories_and_equal_values():
    pos, ticks = _normalise([1e-4, 1e-3, 1e-2], log=True)
    assert pos == pytest.approx([0.0, 0.5, 1.0]) and ticks == [(0.0, "0.0001"), (1.0, "0.01")]
    assert _normalise(["moco", "byol", "simclr", "byol"], log=False) == ([0.5, 0.0, 1.0, 0.0],
                                                                         [(0.0, "byol"), (0.5, "moco"), (1.0, "simclr")])
    assert _normalise([0.1, 0.1], log=True) == ([0.5, 0.5], [(0.5, "0.1")])


def test_project_pca_orders_variance_and_tsne_is_seeded():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 6, generator=g) * torch.tensor([5.0, 0.2, 2.0, 0.1, 0.1, 0.1])  # (200, 6)
    xy = _project(feats, "pca")
    assert xy.shape == (200, 2) and xy[:, 0].var() >= xy[:, 1].var()
    assert xy[:, 0].var() == pytest.approx(feats[:, 0].double().var().item(), rel=0.05)  # the dominant direction
    tsne = _project(feats[:60], "tsne", seed=1)
    assert tsne.shape == (60, 2) and (tsne == _project(feats[:60], "tsne", seed=1)).all()
    with pytest.raises(SslscaleError, match="use one of: pca, tsne"):
        _project(feats, "umap")


def test_embedding_map_of_digits(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("SSLSCALE_DATA", data_root)
    torch.manual_seed(0)
    enc = build_encoder("resnet", in_channels=1, image_size=8, widths=(8, 16), depths=(1, 1))
    out = embedding_map(enc, "digits", str(tmp_path / "map.png"), samples=300)
    _check_png(out)
    with pytest.raises(SslscaleError, match="unknown embedding map method 'umap'"):
        embedding_map(enc, "digits", str(tmp_path / "x.png"), method="umap")
