"""Reading shards safely (shards.read_shard, iter_shard: whole or chunk by chunk) and the stream's
on_error=skip|fail, on real damaged files."""
import io
import json
import tarfile
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from damage import copy_corpus, rewrite_tar, truncate
from sslscale import storage
from sslscale.config import Config
from sslscale.data import corpus, stream
from sslscale.data.position import Position
from sslscale.data.shards import ShardError, checks, iter_shard, read_shard

CHUNK = 1000  # bytes: not a multiple of tar's 512-byte blocks, so chunk edges fall inside headers and data


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


def _parts(folder):
    from sslscale.methods import view_parts

    return view_parts(_cfg("fail"), str(folder))


def _damaged(digits3, tmp_path):
    folder = copy_corpus(digits3, tmp_path / "damaged")
    truncate(_shard(folder, 1)[0])  # train ids 500-999
    rewrite_tar(_shard(folder, 2)[0], {"00001007.image.png": b"\x89PNG garbage"})
    return folder


def test_stream_skips_and_records_bad_shards_and_images(digits3, tmp_path, ray_local):
    folder = _damaged(digits3, tmp_path)
    skip_dir = str(tmp_path / "skipped")
    rows = stream.pretrain_dataset(_cfg("skip"), str(folder), _parts(folder), skip_dir=skip_dir).select_columns(
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
        stream.pretrain_dataset(_cfg("fail"), str(folder), _parts(folder)).take_all()


# ---------------------------------------------------------------- chunk by chunk (manifest `chunks`)

@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """digits in 3 train shards (~1 MB each) hashed in CHUNK-byte chunks: ~1,000 chunks a shard."""
    out = tmp_path_factory.mktemp("chunked") / "digits"
    corpus.prepare("digits", out, shard_size=500, chunk_bytes=CHUNK, progress=False)
    return out


def _entry(folder, i=1):
    return corpus.load_manifest(folder)["splits"]["train"]["shards"][i]


def _extents(path) -> dict[int, tuple[int, int]]:
    """Sample id -> (first byte of its first header, end of its last member's data), from tarfile."""
    out: dict[int, tuple[int, int]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            sid = int(m.name.partition(".")[0])
            out[sid] = (out.get(sid, (m.offset, 0))[0], m.offset_data + m.size)
    return out


def test_a_chunked_shard_reads_as_the_whole_file_does(chunked):
    entry = _entry(chunked)
    path = chunked / entry["name"]
    spans = [(a, b) for a, b in _extents(path).values() if a // CHUNK != (b - 1) // CHUNK]
    assert spans  # samples (and members) that lie across chunk edges
    rows = read_shard(str(path), "webdataset", **checks(entry), labelled=True)
    assert rows == read_shard(str(path), "webdataset", sha256=entry["sha256"], labelled=True)
    assert [r[0] for r in rows] == list(range(500, 1000))


def test_a_flipped_byte_in_a_middle_chunk_is_refused_and_nothing_from_there_on_is_used(chunked, tmp_path):
    folder = copy_corpus(chunked, tmp_path / "c")
    entry = _entry(folder)
    path = folder / entry["name"]
    with tarfile.open(path) as tar:  # a byte inside an image near the middle: the tar still parses
        image = [m for m in tar if m.name.endswith(".image.png")][250]
    data = bytearray(path.read_bytes())
    data[image.offset_data + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    bad = (image.offset_data + 40) // CHUNK
    assert 0 < bad < len(entry["chunks"]) - 1
    with pytest.raises(ShardError, match=rf"train-000001.tar was modified after it was prepared \(the sha256 of its "
                                         rf"chunk {bad + 1} of {len(entry['chunks'])}, from byte {bad * CHUNK}, no "
                                         rf"longer matches manifest.json\): re-run"):
        read_shard(str(path), "webdataset", **checks(entry))  # a list: no rows at all
    got = []
    with pytest.raises(ShardError, match="train-000001.tar was modified after it was prepared"):
        for row in iter_shard(str(path), "webdataset", **checks(entry)):
            got.append(row[0])
    ends = _extents(path)
    assert got == list(range(500, 500 + len(got))) and len(got) > 100  # rows before the damage came first
    assert all(ends[sid][1] <= bad * CHUNK for sid in got)  # none with a byte in or after the flipped chunk


def test_a_truncated_or_extended_chunked_shard_is_named(chunked, tmp_path):
    folder = copy_corpus(chunked, tmp_path / "c")
    entry = _entry(folder)
    path = folder / entry["name"]
    _, kib = storage.sha256_chunks(str(path), 1024)  # the file holds whole KiBs: no short last chunk
    path.write_bytes(path.read_bytes() + bytes(1024))  # still a valid tar, but not the prepared bytes
    with pytest.raises(ShardError, match=r"train-000001.tar was modified after it was prepared \(it is longer"):
        read_shard(str(path), "webdataset", chunks=kib, chunk_bytes=1024)
    with pytest.raises(ShardError, match=r"train-000001.tar was modified after it was prepared \(the sha256 of its "
                                         r"chunk 1035 of 1035, from byte 1034000,"):  # the last, 240 bytes, grew
        read_shard(str(path), "webdataset", **checks(entry))
    truncate(path)
    with pytest.raises(ShardError, match=r"train-000001.tar is truncated or corrupt.*sha256 no longer matches"):
        read_shard(str(path), "webdataset", **checks(entry))
    path.unlink()
    with pytest.raises(ShardError, match="train-000001.tar cannot be read"):
        read_shard(str(path), "webdataset", **checks(entry))


def test_an_old_manifest_without_chunks_still_reads_whole(chunked, tmp_path, monkeypatch):
    folder = copy_corpus(chunked, tmp_path / "old")
    manifest = json.loads((folder / corpus.MANIFEST).read_text())
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            del entry["chunks"], entry["chunk_bytes"]
    (folder / corpus.MANIFEST).write_text(json.dumps(manifest))
    expected = corpus.read_split(chunked, "train")
    monkeypatch.setattr(storage, "read_chunks", None)  # the whole-file path never streams
    ids, images, labels = corpus.read_split(folder, "train")
    assert np.array_equal(ids, expected[0]) and np.array_equal(images, expected[1])
    assert np.array_equal(labels, expected[2])
    truncate(folder / "train-000001.tar")
    with pytest.raises(ShardError, match=r"train-000001.tar is truncated or corrupt.*sha256 no longer matches"):
        corpus.read_split(folder, "train")


def test_members_larger_than_a_chunk_are_read_whole(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # noise: a PNG of ~800 bytes, over three 256-byte chunks
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / f"{i}.png")
    m = corpus.prepare(str(src), tmp_path / "out", image_size=16, chunk_bytes=256, progress=False)
    entry = m["splits"]["train"]["shards"][0]
    path = str(tmp_path / "out" / entry["name"])
    rows = read_shard(path, "webdataset", **checks(entry))
    assert len(entry["chunks"]) > 20 and all(len(r[1][0]) > 3 * 256 for r in rows)
    assert rows == read_shard(path, "webdataset", sha256=entry["sha256"])


def test_a_chunked_read_holds_about_one_chunk(chunked, monkeypatch):
    entry = _entry(chunked)
    path = str(chunked / entry["name"])
    reads, read_chunks = [], storage.read_chunks

    def counted(p, size):
        for chunk in read_chunks(p, size):
            reads.append(len(chunk))
            yield chunk

    monkeypatch.setattr(storage, "read_chunks", counted)
    assert sum(1 for _ in iter_shard(path, "webdataset", **checks(entry))) == 500
    assert len(reads) == len(entry["chunks"]) and max(reads) <= CHUNK  # every read one chunk at most
    monkeypatch.undo()
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_shard(path, "webdataset", **checks(entry)))  # rows dropped as they come
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        whole = sum(1 for _ in iter_shard(path, "webdataset", sha256=entry["sha256"]))
        peak_whole = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = (chunked / entry["name"]).stat().st_size
    assert n == whole == 500
    # a chunk, a member and ~100 bytes of bookkeeping a sample (ids seen), where a whole read holds the whole file
    assert peak < size / 10 and peak_whole > size


def test_a_samples_members_must_be_next_to_each_other(tmp_path):
    path = tmp_path / "apart.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("00000001.image.png", "00000002.image.png", "00000001.label.cls"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(ShardError, match="truncated or corrupt .*sample 1's members are not next to each other"):
        read_shard(str(path), "webdataset")


def _read_args(folder, tmp_path, on_error):
    manifest = corpus.load_manifest(folder)
    return dict(corpus_dir=str(folder), fmt="webdataset", consumed=Position(), on_error=on_error,
                skip_dir=str(tmp_path / "skips"), chunks={s["name"]: {k: s[k] for k in ("chunk_bytes", "chunks")}
                                                          for s in manifest["splits"]["train"]["shards"]})


def test_the_stream_reads_a_chunked_shard_in_blocks_and_stops_at_damage(chunked, tmp_path):
    entry = _entry(chunked)
    item = {"epoch": np.array([0]), "shard": np.array([entry["name"]]), "sha256": np.array([entry["sha256"]])}
    blocks = list(stream.read_blocks(item, **_read_args(chunked, tmp_path, "fail")))
    assert [len(b["id"]) for b in blocks] == [256, 244]
    assert np.array_equal(np.concatenate([b["id"] for b in blocks]), np.arange(500, 1000))

    folder = copy_corpus(chunked, tmp_path / "c")
    data = bytearray((folder / entry["name"]).read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF  # past the first block's samples
    (folder / entry["name"]).write_bytes(bytes(data))
    blocks = list(stream.read_blocks(item, **_read_args(folder, tmp_path, "skip")))
    assert [len(b["id"]) for b in blocks] == [256]  # checked before the damage: used; the rest left out
    found = stream.skipped(str(tmp_path / "skips"))["shard"]
    assert list(found) == ["train-000001.tar"] and "modified after it was prepared" in found["train-000001.tar"]
    with pytest.raises(ShardError, match="train-000001.tar was modified after it was prepared"):
        list(stream.read_blocks(item, **_read_args(folder, tmp_path, "fail")))


# ---------------------------------------------------------------- records of several fields (a picture and its caption)

CAPTION = {"kind": "text", "encoding": "ids", "dtype": "uint16", "max_length": 6, "vocab_size": 50}


def _pairs(n: int = 40):
    """n records of an 8x8 grey picture and a caption of 1-6 token ids, labelled by parity."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    captions = [rng.integers(5, 50, 1 + i % 6).astype(np.uint16) for i in range(n)]
    return images, captions


@pytest.fixture(scope="module", params=["webdataset", "parquet"])
def paired(request, tmp_path_factory):
    """A corpus prepared by the real writer from a source of image-caption records (the CLIP-style issue's sources
    come later; this one is built here), in both shard formats."""
    from sslscale.data.sources import Source

    images, captions = _pairs()
    src = Source("pairs", "test", {"image": {"kind": "image", "encoding": "png", "shape": [8, 8, 1],
                                             "dtype": "uint8"}, "caption": CAPTION}, ["even", "odd"],
                 {"train": (40, [((im, cap), i % 2) for i, (im, cap) in enumerate(zip(images, captions))])})
    out = tmp_path_factory.mktemp("pairs") / request.param
    with pytest.MonkeyPatch.context() as m:
        m.setattr(corpus.sources, "open_source", lambda *a, **kw: src)
        corpus.prepare("pairs", out, fmt=request.param, shard_size=16, progress=False)
    return out


def test_a_record_holds_a_picture_and_its_caption_in_one_shard_row(paired):
    from sslscale.data.modalities import Image, Text, data_field, data_fields

    manifest = corpus.load_manifest(paired)
    assert list(manifest["fields"]) == ["image", "caption", "label"]
    fields = data_fields(manifest)
    assert [type(f) for f in fields.values()] == [Image, Text]
    assert [f.member for f in fields.values()] == ["image.png", "caption.ids"]
    images, captions = _pairs()
    rows = []
    for entry in manifest["splits"]["train"]["shards"]:
        rows += read_shard(str(paired / entry["name"]), manifest["format"], **checks(entry), labelled=True,
                           members=("caption.ids", "image.png"))  # in the order asked
    assert [r[0] for r in rows] == list(range(40)) and [r[2] for r in rows] == [i % 2 for i in range(40)]
    assert all(np.array_equal(fields["caption"].decode(r[1][0])[: len(captions[i])], captions[i])
               and np.array_equal(fields["image"].decode(r[1][1]), images[i]) for i, r in enumerate(rows))
    assert isinstance(data_field(manifest, kind="text"), Text)
    with pytest.raises(Exception, match="holds 2 data fields where one data field is read"):
        data_field(manifest, str(paired))  # an encoder of one kind names the kind it reads


def test_the_stream_makes_each_fields_views_from_one_record(paired, tmp_path, ray_local):
    """A method that reads both fields (as CLIP will) names a typed layout for each; the stream, on real Ray Data
    tasks, decodes both members of every record and makes both fields' views, row by row."""
    from sslscale.data.modalities import ImageLayout, TextLayout

    def views(cfg, sizes):  # a method's Method.views
        return {"image": ImageLayout(n_views=1), "text": TextLayout(token_mask_ratio=0.5)}

    cfg = Config().override(["data.split=train", "data.batch_size=8", "train.steps=2", "data.seed=3"])
    parts = stream.view_parts(cfg, corpus.load_manifest(paired), str(paired), views)
    assert [(p.field.name, type(p.layout).__name__) for p in parts] == [("image", "ImageLayout"),
                                                                         ("caption", "TextLayout")]
    rows = stream.pretrain_dataset(cfg, str(paired), parts).take_all()
    first = [r for r in rows if r["epoch"] == 0]
    assert sorted(r["id"] for r in first) == list(range(40))
    assert set(first[0]) == {"id", "epoch", "view_0", "tokens", "targets"}
    images, captions = _pairs()
    for row in first:
        sid = int(row["id"])
        expected = parts[1].field.views(parts[1].field.stack([parts[1].field.decode(
            parts[1].field.encode(captions[sid]))]), np.array([sid]), seed=3, epoch=0, layout=parts[1].layout)
        assert np.array_equal(row["targets"], expected["targets"][0]) and row["view_0"].shape == (1, 8, 8)
    with pytest.raises(Exception, match="asks the text field 'caption' for ImageLayout views"):
        stream.view_parts(cfg, corpus.load_manifest(paired), str(paired), lambda cfg, sizes: {"text": ImageLayout()})
