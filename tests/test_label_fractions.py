"""Label efficiency foundations: stratified, seeded label fractions (transfer.label_subset), their score names, the
transfer.protocols / transfer.label_fractions keys, and the seeded, stratified test split of a folder source."""
import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import one_line_error, run
from test_corpus import _png

from sslscale.checks import validate

from sslscale.checks import PROTOCOLS
from sslscale.config import Config, TransferConfig
from sslscale.data import corpus
from sslscale.encoders import build_encoder
from sslscale.errors import SslscaleError
from sslscale.evaluation.transfer import evaluate, label_subset, scores

SIZES = (100, 50, 7, 1000)  # an imbalanced four-class split


def _labels(sizes=SIZES, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes))


# ---------------------------------------------------------------- label_subset

@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_subset_is_stratified(fraction):
    labels = _labels()
    keep = label_subset(labels, fraction, seed=0)
    assert keep.dtype == np.int64 and np.all(np.diff(keep) > 0)  # sorted, no repeats
    got = np.bincount(labels[keep], minlength=len(SIZES))
    assert list(got) == [max(1, round(fraction * n)) for n in SIZES]
    assert all(abs(g - fraction * n) <= 1 for g, n in zip(got, SIZES) if fraction * n >= 1)


def test_subset_is_seeded_and_nested():
    labels = _labels()
    a, again, other = (label_subset(labels, 0.1, seed) for seed in (0, 0, 1))
    assert np.array_equal(a, again) and not np.array_equal(a, other)
    assert set(label_subset(labels, 0.01, 0).tolist()) <= set(a.tolist())  # 1% of the labels lie among the 10%


def test_fraction_one_is_everything():
    labels = np.array([0, 0, 2, 2, 2])  # class 1 absent: fraction 1.0 is today's behaviour, no check
    assert np.array_equal(label_subset(labels, 1.0, seed=3, classes=3), np.arange(5))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_bad_fraction_is_one_line(fraction):
    with pytest.raises(SslscaleError, match=r"label fraction .* for the fmnist train split is outside \(0, 1\]: use "
                                            r".*transfer.label_fractions") as err:
        label_subset(_labels(), fraction, 0, target="fmnist")
    assert "\n" not in str(err.value)


def test_class_missing_from_the_split_is_one_line():
    labels = np.array([0, 0, 0, 2, 2, 2])
    with pytest.raises(SslscaleError, match=r"label fraction 0.5 of the pets train split \(6 samples\) cannot keep a "
                                            r"sample of class 1: it has none; use a larger transfer.train_samples"):
        label_subset(labels, 0.5, 0, classes=3, target="pets")
    with pytest.raises(SslscaleError, match="class 0: it has none"):
        label_subset(np.zeros(0, np.int64), 0.5, 0, target="pets")


# ---------------------------------------------------------------- config keys

def test_config_keys_default_and_accept_lists():
    assert (TransferConfig().protocols, TransferConfig().label_fractions) == ("knn,linear", "1.0")
    assert PROTOCOLS == ("knn", "linear", "finetune", "scratch")
    cfg = Config().override(["transfer.label_fractions=0.01, 0.1,1.0", "transfer.protocols=linear"])
    assert validate(cfg).transfer.label_fractions == "0.01, 0.1,1.0"


@pytest.mark.parametrize("key, value", [
    ("label_fractions", "0"), ("label_fractions", "1.5"), ("label_fractions", "0.1,abc"), ("label_fractions", ""),
    ("label_fractions", "0.1,0.10"), ("label_fractions", "nan"), ("protocols", "knn,probe"),
    ("protocols", ""), ("protocols", "knn,knn")])
def test_bad_config_values_are_one_line(key, value):
    cfg = Config().override([f"transfer.{key}={value}"])
    allowed = {"label_fractions": r"comma-separated fractions in \(0, 1\], e.g. 0.01,0.1,1.0",
               "protocols": "a comma-separated list of knn, linear, finetune, scratch"}[key]
    with pytest.raises(SslscaleError, match=rf"^bad value for transfer.{key}: must be {allowed}$"):
        validate(cfg)


# ---------------------------------------------------------------- score names

def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return torch.eye(3, 8)[y] * 5 + torch.randn(n, 8, generator=g), y


def test_score_names_for_full_and_fractional_labels():
    (xtr, ytr), (xte, yte) = _blobs(300, 0), _blobs(90, 1)
    data = {"name": "blobs", "classes": 3, "seed": 0, "train": (None, ytr), "test": (None, yte)}
    got = scores(xtr, xte, data, TransferConfig(label_fractions="0.02,1"))  # 0.02: 2 per class, fewer than knn_k
    assert list(got) == ["knn_top1/frac0.02", "knn_balanced/frac0.02", "linear_top1/frac0.02",
                         "linear_balanced/frac0.02", "knn_top1", "knn_balanced", "linear_top1", "linear_balanced"]
    assert got["knn_top1"] > 0.95 and got["linear_top1"] > 0.95 and all(0 <= v <= 1 for v in got.values())
    assert list(scores(xtr, xte, data, TransferConfig(protocols="linear", label_fractions="0.10"))) == [
        "linear_top1/frac0.10", "linear_balanced/frac0.10"]  # the fraction as written


# ---------------------------------------------------------------- folder sources get a test split

PETS = {"cat": 10, "dog": 5, "eel": 2}  # images per class folder


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """Class subfolders of 8x8 grayscale PNGs: a white stripe in rows 2c, 2c+1 for class c, and the top-left
    pixel a grey unique to the image (10 x class + index + 1)."""
    src = tmp_path_factory.mktemp("pets") / "pets"
    for c, (name, n) in enumerate(PETS.items()):
        (src / name).mkdir(parents=True)
        for i in range(n):
            image = np.zeros((8, 8), np.uint8)
            image[2 * c:2 * c + 2] = 255
            image[0, 0] = 10 * c + i + 1
            Image.fromarray(image).save(src / name / f"{i:02d}.png")
    return src


def _split_values(out):
    """split -> (the unique grey of each image, its label)."""
    found = {}
    for split in ("train", "test"):
        _, images, labels = corpus.read_split(out, split)
        found[split] = (images[:, 0, 0, 0].tolist(), labels.tolist())
    return found


def test_folder_test_split_is_disjoint_stratified_and_seeded(pets, tmp_path):
    manifest = corpus.prepare(str(pets), tmp_path / "a", image_size=8, progress=False)
    assert list(manifest["splits"]) == ["train", "test"]
    got = _split_values(tmp_path / "a")
    (train, train_y), (test, test_y) = got["train"], got["test"]
    assert not set(train) & set(test) and sorted(train + test) == sorted(10 * c + i + 1 for c, n in
                                                                        enumerate(PETS.values()) for i in range(n))
    assert [(v - 1) // 10 for v in test] == test_y and [(v - 1) // 10 for v in train] == train_y  # labels follow
    assert np.bincount(test_y).tolist() == [2, 1, 1] and np.bincount(train_y).tolist() == [8, 4, 1]
    again = corpus.prepare(str(pets), tmp_path / "b", image_size=8, progress=False)
    assert again["splits"] == manifest["splits"]  # the same seed: byte-identical shards
    corpus.prepare(str(pets), tmp_path / "c", image_size=8, progress=False, seed=1)
    assert sorted(_split_values(tmp_path / "c")["test"][0]) != sorted(test)  # another seed, another test split


def test_prepared_folder_is_a_target_with_fractions(pets, tmp_path):
    out = tmp_path / "pets"
    corpus.prepare(str(pets), out, image_size=8, progress=False, test_fraction=0.4)
    torch.manual_seed(0)
    enc = build_encoder("resnet", in_channels=1, image_size=8, widths=(4,), depths=(1,))
    got = evaluate(enc, TransferConfig(target=str(out), label_fractions="0.5,1.0", knn_k=3))
    assert set(got) == {f"pets/{base}{p}_{metric}{frac}" for base in ("", "random_init/", "pixels/")
                        for p in ("knn", "linear") for metric in ("top1", "balanced")
                        for frac in ("", "/frac0.5")} | {"pets/majority"}
    # the stripe tells the classes apart: the pipeline read the images and the labels right
    assert [got[f"pets/pixels/{p}_top1{frac}"] for p in ("knn", "linear") for frac in ("", "/frac0.5")] == [1.0] * 4


def test_folder_class_too_small_for_a_test_split(pets, tmp_path):
    _png(pets.parent / "few" / "big" / "a.png")
    _png(pets.parent / "few" / "big" / "b.png")
    _png(pets.parent / "few" / "tiny" / "a.png")
    with pytest.raises(SslscaleError, match=r"class folder .*few/tiny has 1 readable file\(s\) but a test split "
                                            r"needs at least 2 per class: .* --test-fraction 0"):
        corpus.prepare(str(pets.parent / "few"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    manifest = corpus.prepare(str(pets.parent / "few"), tmp_path / "out", progress=False, test_fraction=0)
    assert list(manifest["splits"]) == ["train"]
    one_line_error(run("data", "prepare", str(pets.parent / "few"), "--out", str(tmp_path / "cli")), "few/tiny",
                   "--test-fraction 0")


def test_unlabelled_folder_and_bad_test_fraction(tmp_path):
    _png(tmp_path / "flat" / "a.png")
    _png(tmp_path / "flat" / "b.png")
    assert list(corpus.prepare(str(tmp_path / "flat"), tmp_path / "out", progress=False)["splits"]) == ["train"]
    for bad in (1.0, -0.1):
        with pytest.raises(SslscaleError, match=r"test fraction .* is outside \[0, 1\)"):
            corpus.prepare(str(tmp_path / "flat"), tmp_path / "o2", progress=False, test_fraction=bad)
