"""sslscale.data.corpus: sources -> shards + manifest, and the reader, on real files in tmp_path."""
import gzip
import hashlib
import struct
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from sslscale.data import corpus
from sslscale.data.modalities.image import decode_image
from sslscale.data.shards import CHUNK_BYTES
from sslscale.data.sources.images import FMNIST_DIR, read_idx
from sslscale.errors import SslscaleError

FMNIST = Path(FMNIST_DIR)


def _digits_expected(split):
    d = load_digits()
    mask = (np.arange(len(d.images)) % 5 == 0) == (split == "test")
    images = np.round(d.images[mask] * (255 / 16)).astype(np.uint8)[..., None]
    return images, d.target[mask]


@pytest.fixture(scope="module")
def digits_wds(tmp_path_factory):
    out = tmp_path_factory.mktemp("wds") / "digits"
    return out, corpus.prepare("digits", out, shard_size=500, progress=False)


def _png(path, mode="L", size=(12, 12), color=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


# ---------------------------------------------------------------- digits / formats

def test_digits_webdataset_manifest(digits_wds):
    out, manifest = digits_wds
    assert corpus.load_manifest(out) == manifest
    assert manifest["format"] == "webdataset" and manifest["source"]["kind"] == "digits"
    splits = manifest["splits"]
    assert splits["train"]["samples"] == 1437 and splits["test"]["samples"] == 360
    assert [s["name"] for s in splits["train"]["shards"]] == [f"train-{i:06d}.tar" for i in range(3)]
    assert [s["first_id"] for s in splits["train"]["shards"]] == [0, 500, 1000]
    assert manifest["fields"]["image"] == {"kind": "image", "encoding": "png", "shape": [8, 8, 1], "dtype": "uint8"}
    assert manifest["fields"]["label"]["classes"] == [str(i) for i in range(10)]
    assert manifest["skipped"] == []
    for split in ("train", "test"):
        corpus.verify_shards(out, split)


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_each_shard_records_the_sha256_of_each_chunk(digits_wds, tmp_path, fmt):
    _, manifest = digits_wds  # ~1 MB shards: one chunk of the default 8 MiB, the whole file
    assert all(s["chunk_bytes"] == CHUNK_BYTES and s["chunks"] == [s["sha256"]]
               for split in manifest["splits"].values() for s in split["shards"])
    m = corpus.prepare("digits", tmp_path / "c", fmt=fmt, shard_size=500, chunk_bytes=3000, progress=False)
    for entry in m["splits"]["train"]["shards"]:
        data = (tmp_path / "c" / entry["name"]).read_bytes()
        assert entry["chunk_bytes"] == 3000 and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["chunks"] == [hashlib.sha256(data[i : i + 3000]).hexdigest() for i in range(0, len(data), 3000)]
        assert len(entry["chunks"]) > 1 and len(data) % 3000  # the last chunk is short
    ids, images, _ = corpus.read_split(tmp_path / "c", "train")
    assert list(ids) == list(range(1437)) and np.array_equal(images, _digits_expected("train")[0])


def test_digits_round_trip_and_separate_label_field(digits_wds):
    out, _ = digits_wds
    for split in ("train", "test"):
        ids, images, labels = corpus.read_split(out, split)
        expected_images, expected_labels = _digits_expected(split)
        assert ids.dtype == np.int64 and list(ids) == list(range(len(expected_labels)))
        assert images.dtype == np.uint8 and np.array_equal(images, expected_images)
        assert labels.dtype == np.int64 and np.array_equal(labels, expected_labels)
    assert corpus.read_split(out, "test", with_labels=False)[2] is None
    with tarfile.open(out / "test-000000.tar") as tar:
        names = tar.getnames()
        assert names[:2] == ["00000000.image.png", "00000000.label.cls"]
        assert tar.extractfile("00000001.label.cls").read() == b"5"


def test_digits_rerun_is_byte_identical(digits_wds, tmp_path):
    out, manifest = digits_wds
    again = corpus.prepare("digits", tmp_path / "again", shard_size=500, progress=False)
    assert again["splits"] == manifest["splits"]
    for path in out.glob("*.tar"):
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes()


def test_parquet_round_trip(tmp_path):
    manifest = corpus.prepare("digits", tmp_path / "pq", fmt="parquet", shard_size=1000, progress=False)
    assert manifest["format"] == "parquet"
    assert [s["name"] for s in manifest["splits"]["train"]["shards"]] == ["train-000000.parquet",
                                                                           "train-000001.parquet"]
    table = pq.read_table(tmp_path / "pq" / "test-000000.parquet")
    assert table.column_names == ["id", "image", "label"]
    assert str(table.schema.field("id").type) == "int64" and str(table.schema.field("label").type) == "int64"
    corpus.verify_shards(tmp_path / "pq", "train")
    ids, images, labels = corpus.read_split(tmp_path / "pq", "train")
    expected_images, expected_labels = _digits_expected("train")
    assert list(ids) == list(range(1437))
    assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)


def test_progress_prints_final_line(tmp_path, capsys):
    corpus.prepare("digits", tmp_path / "p", progress=True)
    err = capsys.readouterr().err
    assert "1797/1797 samples" in err and "samples/s" in err and "ETA" in err


# ---------------------------------------------------------------- folder source

def test_folder_with_class_subfolders_and_rgb(tmp_path):
    src = tmp_path / "imgs"
    _png(src / "cats" / "a.png", "L", (12, 12), 100)
    _png(src / "cats" / "b.PNG", "L", (40, 20), 50)
    _png(src / "dogs" / "c.png", "RGB", (16, 16), (10, 200, 30))
    (src / "dogs" / "notes.txt").write_text("not an image")
    manifest = corpus.prepare(str(src), tmp_path / "out", image_size=16, progress=False, test_fraction=0)
    assert manifest["source"] == {"kind": "folder", "path": str(src)}
    assert manifest["fields"]["image"]["shape"] == [16, 16, 3]
    assert manifest["fields"]["label"]["classes"] == ["cats", "dogs"]
    assert list(manifest["splits"]) == ["train"] and manifest["splits"]["train"]["samples"] == 3
    ids, images, labels = corpus.read_split(tmp_path / "out", "train")
    assert images.shape == (3, 16, 16, 3) and sorted(labels) == [0, 0, 1]
    pictures = {int(images[i, 0, 0, 1]): int(labels[i]) for i in range(3)}  # grey value (green channel) -> class
    assert pictures == {100: 0, 50: 0, 200: 1} and all((images[i] == images[i, 0, 0]).all() for i in range(3))


def test_folder_classes_are_mixed_across_shards(tmp_path):
    """Samples are written in a seeded order, not class by class: a shard (and a batch) holds several classes."""
    src = tmp_path / "imgs"
    for c in ("a", "b"):
        for i in range(10):
            _png(src / c / f"{i}.png", "L", (8, 8), 10 * i)
    corpus.prepare(str(src), tmp_path / "out", image_size=8, shard_size=5, progress=False, test_fraction=0)
    _, _, labels = corpus.read_split(tmp_path / "out", "train")
    assert sorted(labels) == [0] * 10 + [1] * 10 and list(labels) != sorted(labels)
    assert any(len(set(labels[i:i + 5])) == 2 for i in range(0, 20, 5))


def test_folder_grayscale_unlabelled(tmp_path):
    src = tmp_path / "imgs"
    _png(src / "top.png", "L")
    _png(src / "a" / "b" / "deep.png", "1")
    manifest = corpus.prepare(str(src), tmp_path / "out", image_size=8, progress=False)
    assert manifest["fields"]["image"]["shape"] == [8, 8, 1] and "label" not in manifest["fields"]
    ids, images, labels = corpus.read_split(tmp_path / "out", "train")
    assert images.shape == (2, 8, 8, 1) and labels is None
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        assert tar.getnames() == ["00000000.image.png", "00000001.image.png"]


def test_empty_folder_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("x")
    with pytest.raises(SslscaleError, match=r"no images found under .*empty \(looked for \.png"):
        corpus.prepare(str(tmp_path / "empty"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_path_errors(tmp_path):
    with pytest.raises(SslscaleError, match="neither a built-in.*fmnist, digits"):
        corpus.prepare(str(tmp_path / "nope"), tmp_path / "out", progress=False)
    with pytest.raises(SslscaleError, match="does not exist: pass --path.*dataset-fashion-mnist"):
        corpus.prepare("fmnist", tmp_path / "out", path=tmp_path / "nope", progress=False)
    assert not (tmp_path / "out").exists()


def test_corrupt_image_fail_then_skip(tmp_path):
    src = tmp_path / "imgs"
    _png(src / "a.png")
    _png(src / "c.png")
    bad = src / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(SslscaleError, match=r"cannot decode image .*b\.png: .*--on-error skip"):
        corpus.prepare(str(src), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    manifest = corpus.prepare(str(src), tmp_path / "out", on_error="skip", progress=False)
    assert manifest["skipped"] == [str(bad)] and manifest["splits"]["train"]["samples"] == 2
    assert list(corpus.read_split(tmp_path / "out", "train")[0]) == [0, 1]


def test_truncated_image_body_fail(tmp_path):
    src = tmp_path / "imgs"
    _png(src / "a.png", size=(64, 64))
    data = (src / "a.png").read_bytes()
    (src / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SslscaleError, match="cannot decode image"):
        corpus.prepare(str(src), tmp_path / "out", progress=False)
    with pytest.raises(SslscaleError, match="no image under .* could be decoded"):
        corpus.prepare(str(src), tmp_path / "out", on_error="skip", progress=False)


# ---------------------------------------------------------------- atomicity

def test_existing_corpus_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    corpus.prepare("digits", out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SslscaleError, match="already holds a prepared corpus: pass --overwrite"):
        corpus.prepare("digits", out, shard_size=100, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    corpus.verify_shards(out, "train")
    manifest = corpus.prepare("digits", out, shard_size=1000, overwrite=True, progress=False)
    assert corpus.load_manifest(out) == manifest and len(manifest["splits"]["train"]["shards"]) == 2
    corpus.verify_shards(out, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_nonempty_out_without_manifest_untouched(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(SslscaleError, match="neither empty nor a prepared corpus"):
        corpus.prepare("digits", tmp_path / "out", progress=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


def test_leftover_partial_is_cleaned_and_empty_out_reused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / "train-000000.tar").write_text("stale")
    corpus.prepare("digits", tmp_path / "out", progress=False)
    assert not (tmp_path / "out.partial").exists()
    corpus.verify_shards(tmp_path / "out", "train")


def test_interrupted_prepare_leaves_nothing(tmp_path, monkeypatch):
    real = corpus._write_shard

    def interrupt_after_first(staging, split, index, *args):
        if index == 1:
            raise KeyboardInterrupt
        return real(staging, split, index, *args)

    monkeypatch.setattr(corpus, "_write_shard", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        corpus.prepare("digits", tmp_path / "out", shard_size=200, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- reader errors

def test_verify_detects_modified_and_missing_shard(tmp_path):
    out = tmp_path / "out"
    corpus.prepare("digits", out, shard_size=1000, progress=False)
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(SslscaleError, match=r"train-000001\.tar does not match its sha256.*re-run"):
        corpus.verify_shards(out, "train")
    corpus.verify_shards(out, "test")
    (out / "test-000000.tar").unlink()
    with pytest.raises(SslscaleError, match=r"test-000000\.tar is missing.*re-run"):
        corpus.verify_shards(out, "test")


def test_manifest_and_split_errors(digits_wds, tmp_path):
    out, manifest = digits_wds
    with pytest.raises(SslscaleError, match="no manifest.json in .*sslscale data prepare SOURCE --out"):
        corpus.load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SslscaleError, match="not valid JSON"):
        corpus.load_manifest(tmp_path)
    with pytest.raises(SslscaleError, match=r"no split 'val' \(it has: train, test\)"):
        corpus.shard_paths(out, split="val")
    paths = corpus.shard_paths(manifest, out, "test")
    assert paths == [str(out / "test-000000.tar")] and corpus.shard_paths(out, split="test") == paths


def test_decode_image(tmp_path):
    _png(tmp_path / "x.png", "RGB", (3, 2), (1, 2, 3))
    arr = decode_image((tmp_path / "x.png").read_bytes())
    assert arr.shape == (2, 3, 3) and arr.dtype == np.uint8 and (arr == [1, 2, 3]).all()
    with pytest.raises(SslscaleError, match="cannot decode image bytes"):
        decode_image(b"not a png")


def test_bad_options(tmp_path):
    with pytest.raises(SslscaleError, match="unknown format 'zip': use one of webdataset, parquet"):
        corpus.prepare("digits", tmp_path / "out", fmt="zip")
    with pytest.raises(SslscaleError, match=r"^--path only applies to the built-in sources fmnist, tuxpaint_speech, "
                                            r"openclipart, tuxpaint_captions \(a copy of their files\), not to "
                                            r"'digits': pass a folder"):
        corpus.prepare("digits", tmp_path / "out", path="/x")
    with pytest.raises(SslscaleError, match=r"chunk size \(0\) must be positive"):
        corpus.prepare("digits", tmp_path / "out", chunk_bytes=0)
    assert corpus.builtin_sources() == ("fmnist", "digits", "tuxpaint_speech", "pydocs", "bbcnews", "openclipart",
                                        "tuxpaint_captions")


# ---------------------------------------------------------------- IDX / Fashion-MNIST

def _write_idx(path, array, magic=None):
    header = magic or bytes([0, 0, 8, array.ndim])
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_parser_tiny_file(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    _write_idx(tmp_path / "img.gz", images)
    assert np.array_equal(read_idx(tmp_path / "img.gz"), images)
    _write_idx(tmp_path / "lbl.gz", np.array([3, 1, 4]))
    assert list(read_idx(tmp_path / "lbl.gz")) == [3, 1, 4]


def test_idx_parser_errors(tmp_path):
    images = np.zeros((5, 4, 4), np.uint8)
    _write_idx(tmp_path / "bad_magic.gz", images, magic=bytes([0, 0, 0x0D, 3]))
    with pytest.raises(SslscaleError, match=r"bad_magic\.gz is not an unsigned-byte IDX file"):
        read_idx(tmp_path / "bad_magic.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:  # valid gzip, payload cut short
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 5, 4, 4) + bytes(30))
    with pytest.raises(SslscaleError, match=r"short\.gz is truncated"):
        read_idx(tmp_path / "short.gz")
    _write_idx(tmp_path / "full.gz", images)
    data = (tmp_path / "full.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])  # gzip stream cut short
    with pytest.raises(SslscaleError, match=r"cannot read IDX file .*cut\.gz"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    with pytest.raises(SslscaleError, match=r"cannot read IDX file .*plain\.gz"):
        read_idx(tmp_path / "plain.gz")


def test_fmnist_real_idx_files():
    if not FMNIST.is_dir():
        pytest.skip(f"{FMNIST} missing (Debian package dataset-fashion-mnist)")
    images = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert read_idx(FMNIST / "train-labels-idx1-ubyte.gz").shape == (60000,)
    with gzip.open(FMNIST / "train-images-idx3-ubyte.gz", "rb") as f:
        assert struct.unpack(">IIII", f.read(16)) == (0x803, 60000, 28, 28)


def test_fmnist_truncated_copy_names_file(tmp_path):
    if not FMNIST.is_dir():
        pytest.skip(f"{FMNIST} missing (Debian package dataset-fashion-mnist)")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                 "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).symlink_to(FMNIST / name)
    data = (FMNIST / "train-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(data[:1000])
    with pytest.raises(SslscaleError, match=r"train-labels-idx1-ubyte\.gz"):
        corpus.prepare("fmnist", tmp_path / "out", path=tmp_path, progress=False)
    assert not (tmp_path / "out").exists()
