"""The stepwise spectrum: eigenvalues against numpy's, the effective rank, the fixed probe set on a real corpus, the
probe forward, the plot (alone and from a real sqlite MLflow store) and the config's one-line errors."""
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sslscale.checks import validate

from sslscale.config import Config
from sslscale.data import corpus, probe
from sslscale.errors import SslscaleError
from sslscale.plots import spectrum_plot
from sslscale.runtime import tracking
from sslscale.training.health import effective_rank, spectrum, spectrum_metrics


def _reference(emb: np.ndarray, k: int) -> np.ndarray:
    """numpy's top-k eigenvalues of the covariance of the row-normalised, centred embeddings, 0-padded to k."""
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    zc = z - z.mean(axis=0)
    eigs = np.sort(np.linalg.eigvalsh(zc.T @ zc / len(zc)))[::-1].clip(min=0)
    return np.concatenate([eigs[:k], np.zeros(max(0, k - len(eigs)))])


def test_eigenvalues_match_numpy_with_padding_and_collapse():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 12)) * np.linspace(3.0, 0.1, 12)  # (200, 12), a decaying spectrum
    eigs = spectrum(torch.from_numpy(emb).float(), 5)
    assert len(eigs) == 5 and eigs == sorted(eigs, reverse=True)
    np.testing.assert_allclose(eigs, _reference(emb.astype(np.float32).astype(np.float64), 5), rtol=1e-5, atol=1e-9)

    small = rng.normal(size=(50, 3))  # D=3 < k=6: three eigenvalues, then zeros
    np.testing.assert_allclose(spectrum(torch.from_numpy(small), 6), _reference(small, 6), rtol=1e-9, atol=1e-12)
    assert spectrum(torch.from_numpy(small), 6)[3:] == [0.0, 0.0, 0.0]

    signs = np.resize([1.0, -1.0], 100)  # as many +u as -u after normalising: mean 0, variance 1 along u
    line = np.outer(signs * rng.uniform(1, 2, 100), rng.normal(size=8))  # (100, 8), collapsed to one line
    collapsed = spectrum(torch.from_numpy(line), 8)
    assert collapsed[0] == pytest.approx(1.0) and max(collapsed[1:]) < 1e-12
    assert spectrum_metrics(collapsed)["spectrum/erank"] == pytest.approx(1.0, abs=1e-9)


def test_effective_rank_and_metric_names():
    assert effective_rank([0.25] * 4) == pytest.approx(4.0)
    assert effective_rank([0.5, 0.5, 0.0, 0.0]) == pytest.approx(2.0)  # zeros contribute nothing
    assert effective_rank([0.0, 0.0]) == 0.0
    assert 1.0 < effective_rank([0.7, 0.2, 0.1]) < 3.0
    metrics = spectrum_metrics([0.5, 0.3, 0.2])
    assert list(metrics) == ["spectrum/eig_01", "spectrum/eig_02", "spectrum/eig_03", "spectrum/erank"]
    assert metrics["spectrum/eig_02"] == 0.3


def test_probe_set_is_fixed_by_its_seed(data_root, tmp_path, monkeypatch):
    digits = os.path.join(data_root, "digits")
    first = probe.probe_images(digits, "train", 0, 100)
    assert first.shape == (100, 8, 8, 1) and first.dtype == np.uint8
    assert (probe.probe_images(digits, "train", 0, 100) == first).all()  # a resumed run measures the same images
    assert not (probe.probe_images(digits, "train", 1, 100) == first).all()
    _, images, _ = corpus.read_split(digits, "train", with_labels=False)
    assert len(probe.probe_images(digits, "train", 0, 10**6)) == len(images)  # a small split: all of it

    sharded = tmp_path / "sharded"
    corpus.prepare("digits", sharded, shard_size=300, progress=False)  # 5 train shards
    read = []
    monkeypatch.setattr(probe, "read_shard", lambda path, *a, **kw: read.append(path) or corpus.read_shard(
        path, *a, **kw))
    assert len(probe.probe_images(str(sharded), "train", 3, 500)) == 500 and len(read) == 2  # as few as hold 500
    with pytest.raises(SslscaleError, match="has no split 'val'"):
        probe.probe_images(str(sharded), "val", 0, 10)


def test_probe_forward_is_eval_chunked_and_restores_train_mode():
    from sslscale.encoders import build_encoder
    from sslscale.training.engine import Engine
    from sslscale.training.spectrum import embed

    torch.manual_seed(0)
    encoder = build_encoder("resnet", in_channels=1, image_size=8, widths=(8, 16), depths=(1, 1))
    engine = SimpleNamespace(method=SimpleNamespace(encoder=encoder), device=torch.device("cpu"), dtype=torch.float32,
                             inputs={"view_0": "pixels"})
    engine.to_device = lambda batch: Engine.to_device(engine, batch)
    images = torch.randint(0, 256, (300, 1, 8, 8), dtype=torch.uint8)  # more than one chunk of 256
    emb = embed(engine, images)
    assert encoder.training and emb.shape == (300, encoder.feature_dim) and not emb.requires_grad
    with torch.no_grad():
        expected = encoder.eval()(images.float() / 255)
    torch.testing.assert_close(emb, expected, rtol=1e-4, atol=1e-5)


def _check_png(path):
    assert os.path.getsize(path) > 0
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 200


def test_spectrum_plot_writes_a_png(tmp_path):
    steps = [0, 10, 20, 30]
    eigs = [[0.5 * math.exp(-i / (1 + s / 10)) for i in range(8)] for s in steps]
    eigs[0][-1] = 0.0  # a collapsed direction: left out of the log axis
    out = spectrum_plot(steps, eigs, [effective_rank(e) for e in eigs], str(tmp_path / "spectrum.png"))
    _check_png(out)
    _check_png(spectrum_plot([], [], [], str(tmp_path / "empty.png")))


def test_plot_spectrum_reads_the_run_history(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    run_id = tracking.start_run(uri, Config())
    assert tracking.plot_spectrum(uri, run_id, str(tmp_path / "none.png")) is None  # nothing logged: no plot
    for step in (2, 4, 6):
        metrics = spectrum_metrics([0.4 / (i + step) for i in range(12)])  # eig_01 .. eig_12 (sorted by number)
        tracking.log_metrics(uri, run_id, metrics, step=step)
    _check_png(tracking.plot_spectrum(uri, run_id, str(tmp_path / "spectrum.png")))


@pytest.mark.parametrize("items, words", [
    (["train.spectrum_k=-1"], "bad value for train.spectrum_k: must be 0 (off) or a number of eigenvalues"),
    (["train.probe_samples=0"], "bad value for train.probe_samples: must be a positive number of images"),
    (["train.probe_samples=-5", "train.spectrum_k=0"], "bad value for train.probe_samples"),
])
def test_config_errors_are_one_line_naming_the_key(items, words):
    with pytest.raises(SslscaleError) as e:
        validate(Config().override(items))
    assert str(e.value).startswith(words) and "\n" not in str(e.value)
    validate(Config().override(["train.spectrum_k=0", "train.probe_samples=0"]))  # off: no probe set needed
