"""Reading shards safely (shards.read_shard) and the stream's on_error=skip|fail, on real damaged files."""
import io
import tarfile

import pytest

from damage import copy_corpus, rewrite_tar, truncate
from sslscale import corpus, stream
from sslscale.config import Config
from sslscale.shards import ShardError, read_shard


@pytest.fixture(scope="module")
def digits3(tmp_path_factory):
    """digits with its train split in 3 shards of up to 500 samples."""
    out = tmp_path_factory.mktemp("shards") / "digits"
    corpus.prepare("digits", out, shard_size=500, progress=False)
    return out


def _shard(folder, i):
    entry = corpus.load_manifest(folder)["splits"]["train"]["shards"][i]
    return folder / entry["name"], entry["sha256"]


def test_good_shard_reads_with_its_checksum(digits3):
    path, sha = _shard(digits3, 0)
    rows = read_shard(str(path), "webdataset", sha256=sha, labelled=True)
    assert [r[0] for r in rows] == list(range(500)) and all(r[2] is not None for r in rows)


def test_truncated_and_modified_shards_are_named(digits3, tmp_path):
    folder = copy_corpus(digits3, tmp_path / "c")
    path, sha = _shard(folder, 1)
    rewrite_tar(path, {"00000600.image.png": b"not a png"}, update_manifest=False)
    with pytest.raises(ShardError, match=r"train-000001.tar was modified after it was prepared"):
        read_shard(str(path), "webdataset", sha256=sha)
    truncate(path)
    with pytest.raises(ShardError, match=r"train-000001.tar is truncated or corrupt.*sha256 no longer matches"):
        read_shard(str(path), "webdataset", sha256=sha)
    with pytest.raises(ShardError, match="cannot be read"):
        read_shard(str(tmp_path / "gone.tar"), "webdataset")


def test_tar_cut_at_a_member_boundary_is_truncated_even_without_a_checksum(digits3, tmp_path):
    path, _ = _shard(digits3, 0)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[: 2 * 1024])  # first member's header and data block only: a valid prefix
    with pytest.raises(ShardError, match="truncated or corrupt.*end-of-archive"):
        read_shard(str(cut), "webdataset")


@pytest.mark.parametrize("name", ["../00000001.image.png", "/tmp/00000001.image.png", "sub/00000001.image.png"])
def test_tar_members_outside_the_shard_are_rejected(tmp_path, name):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ShardError, match="unsafe member"):
        read_shard(str(path), "webdataset")


def test_links_are_rejected(tmp_path):
    path = tmp_path / "link.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("00000001.image.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ShardError, match="unsafe member"):
        read_shard(str(path), "webdataset")


def _cfg(on_error):
    return Config().override(["data.split=train", f"data.on_error={on_error}", "data.batch_size=64",
                              "train.steps=10"])


def _damaged(digits3, tmp_path):
    folder = copy_corpus(digits3, tmp_path / "damaged")
    truncate(_shard(folder, 1)[0])  # train ids 500-999
    rewrite_tar(_shard(folder, 2)[0], {"00001007.image.png": b"\x89PNG garbage"})
    return folder


def test_stream_skips_and_records_bad_shards_and_images(digits3, tmp_path, ray_local):
    folder = _damaged(digits3, tmp_path)
    skip_dir = str(tmp_path / "skipped")
    rows = stream.pretrain_dataset(_cfg("skip"), str(folder), skip_dir=skip_dir).select_columns(
        ["id", "epoch"]).take_all()
    per_epoch = {}
    for row in rows:
        per_epoch.setdefault(int(row["epoch"]), []).append(int(row["id"]))
    expected = sorted(set(range(1437)) - set(range(500, 1000)) - {1007})
    assert all(sorted(ids) == expected for ids in per_epoch.values()) and len(per_epoch) >= 2
    found = stream.skipped(skip_dir)
    assert list(found["shard"]) == ["train-000001.tar"] and "truncated" in found["shard"]["train-000001.tar"]
    assert list(found["sample"]) == ["1007"]


def test_stream_fails_with_one_line_naming_the_shard(digits3, tmp_path, ray_local):
    folder = _damaged(digits3, tmp_path)
    # whichever the plan reaches first: both name their shard
    with pytest.raises(Exception, match=r"shard \S*train-000001.tar is truncated|in shard train-000002.tar cannot"):
        stream.pretrain_dataset(_cfg("fail"), str(folder)).take_all()
