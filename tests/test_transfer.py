"""kNN and linear probe on data with a known answer, the digits target end to end, encoder export round trip."""
import numpy as np
import pytest
import torch

from sslscale.config import TransferConfig
from sslscale.data.modalities import Image, Text
from sslscale.encoders import build_encoder
from sslscale.errors import SslscaleError
from sslscale.evaluation.transfer import evaluate, features, knn_accuracy, linear_probe_accuracy
from sslscale.training.export import load_encoder, read_spec, save_encoder


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    return centers[y] + torch.randn(n, 4, generator=g), y


def test_knn_and_probe_on_separable_and_random_labels():
    (xtr, ytr), (xte, yte) = _blobs(300, 0), _blobs(90, 1)
    assert knn_accuracy(xtr, ytr, xte, yte, k=5, classes=3) > 0.95
    assert linear_probe_accuracy(xtr, ytr, xte, yte, classes=3) > 0.95
    shuffled = ytr[torch.randperm(300, generator=torch.Generator().manual_seed(3))]
    assert knn_accuracy(xtr, shuffled, xte, yte, k=5, classes=3) < 0.6


def test_export_round_trip_without_pickle(tmp_path):
    torch.manual_seed(0)
    enc = build_encoder("resnet", in_channels=1, image_size=8, widths=(4, 8), depths=(1, 1)).eval()
    path = save_encoder(enc, str(tmp_path / "x.encoder.safetensors"))
    loaded = load_encoder(str(tmp_path))
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(x), enc(x)) and not loaded.training
    assert (loaded.in_channels, loaded.image_size) == (1, 8) and read_spec(path)["feature_dim"] == 8
    with pytest.raises(SslscaleError, match="must end in 'encoder.safetensors'"):
        save_encoder(enc, str(tmp_path / "x.pt"))
    (tmp_path / "bad.encoder.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SslscaleError, match="not a readable safetensors file"):
        load_encoder(str(tmp_path / "bad.encoder.safetensors"))


def test_evaluate_digits_with_baselines(data_root, monkeypatch):
    monkeypatch.setenv("SSLSCALE_DATA", data_root)
    torch.manual_seed(0)
    enc = build_encoder("resnet", in_channels=1, image_size=8, widths=(8, 16), depths=(1, 1))
    scores = evaluate(enc, TransferConfig(target="digits"))
    assert set(scores) == {f"digits/{p}{m}" for p in ("", "random_init/", "pixels/")
                           for m in ("knn_top1", "linear_top1", "knn_balanced", "linear_balanced")} | {"digits/majority"}
    assert 0.05 <= scores["digits/majority"] < 0.15  # ten classes about as common
    assert scores["digits/pixels/knn_top1"] > 0.9  # the digits are easy from pixels: the pipeline reads them right
    assert all(0.1 <= v <= 1.0 for k, v in scores.items() if k != "digits/majority")


def _images(side: int, channels: int = 1) -> Image:
    return Image("image", {"kind": "image", "encoding": "png", "shape": [side, side, channels], "dtype": "uint8"})


def test_shape_or_kind_mismatch_is_one_line():
    enc = build_encoder("resnet", in_channels=3, image_size=8, widths=(4,), depths=(1,))
    with pytest.raises(SslscaleError, match="takes 8x8x3"):
        features(enc, _images(8), np.zeros((2, 8, 8, 1), np.uint8))
    text = Text("text", {"kind": "text", "encoding": "ids", "dtype": "uint16", "max_length": 8, "vocab_size": 50})
    with pytest.raises(SslscaleError, match="^the encoder takes images but the target holds text: pick a target of "
                                            "images$"):
        features(enc, text, np.zeros((2, 8), np.int64))


def test_confusion_counts_rows_are_true_classes():
    from sslscale.evaluation.transfer import confusion_counts

    counts = confusion_counts(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 4)
    assert counts.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]


def test_pictures_of_a_scored_encoder(data_root, monkeypatch, tmp_path):
    """The linear probe's confusion matrix and the embedding map as files; one fraction: no efficiency curve."""
    from sslscale.evaluation.transfer import PICTURES, _evaluate

    monkeypatch.setenv("SSLSCALE_DATA", data_root)
    torch.manual_seed(0)
    enc = build_encoder("resnet", in_channels=1, image_size=8, widths=(4, 8), depths=(1, 1))
    tcfg = TransferConfig(target="digits", baseline=False, embedding_map="pca", map_samples=50)
    scores, made = _evaluate(enc, tcfg, out_dir=str(tmp_path))
    assert made == [str(tmp_path / PICTURES[0]), str(tmp_path / PICTURES[1])]
    assert all((tmp_path / p).stat().st_size > 5_000 for p in PICTURES[:2])
    none = TransferConfig(target="digits", baseline=False, embedding_map="none", protocols="knn")
    assert _evaluate(enc, none, out_dir=str(tmp_path / "none"))[1] == []  # no linear probe, no map
    assert scores == evaluate(enc, tcfg)  # the pictures change no score


def test_a_target_that_cannot_score_the_encoder_fails_before_training(debug_cfg, tmp_path):
    from sslscale import pretrain
    from sslscale.evaluation.transfer import check_target

    check_target(TransferConfig(target="digits"), _images(8))  # the debug corpus' own size
    with pytest.raises(SslscaleError, match=r"^transfer.target digits has 8x8x1 images but the encoder takes the "
                                            r"corpus' 28x28x1: pick a target of that size"):
        check_target(TransferConfig(target="digits"), _images(28))
    with pytest.raises(SslscaleError, match="neither a built-in name"):  # before a run, a Ray instance, a step
        pretrain(debug_cfg.override([f"transfer.target={tmp_path / 'missing'}"]))
    assert not (tmp_path / "runs").exists()


def test_transfer_seed_draws_other_label_fractions(data_root, monkeypatch):
    monkeypatch.setenv("SSLSCALE_DATA", data_root)
    torch.manual_seed(0)
    enc = build_encoder("resnet", in_channels=1, image_size=8, widths=(4, 8), depths=(1, 1))
    tcfg = TransferConfig(target="digits", baseline=False, protocols="knn", label_fractions="0.05,1.0")
    zero, one = evaluate(enc, tcfg), evaluate(enc, TransferConfig(**{**tcfg.__dict__, "seed": 1}))
    assert zero["digits/knn_top1"] == one["digits/knn_top1"]  # all labels: the seed draws nothing
    assert zero["digits/knn_top1/frac0.05"] != one["digits/knn_top1/frac0.05"]


def test_balanced_accuracy_and_the_majority_rate():
    from sslscale.evaluation.transfer import balanced_accuracy

    truth = torch.tensor([0, 0, 0, 0, 1, 2])
    guess = torch.tensor([0, 0, 0, 0, 0, 2])  # the common class right, one of the rare ones wrong: top-1 5/6
    assert balanced_accuracy(guess, truth, classes=4) == pytest.approx((1 + 0 + 1) / 3)  # class 3 absent
    from sslscale.evaluation.transfer import majority

    assert majority(torch.tensor([2, 2, 1]), truth) == pytest.approx(1 / 6)  # always "2", the train split's commonest
    assert majority(torch.tensor([], dtype=torch.long), truth) == 0.0
