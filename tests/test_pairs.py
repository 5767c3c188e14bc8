"""Picture-caption corpora (sources/pairs.py) from real files: a captioned folder, a .jsonl, and subsets of the
built-ins openclipart and tuxpaint_captions (the Debian packages' own pictures and captions); records of an image
and a text field, read back from the shards."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sslscale.data import corpus, sources
from sslscale.data.modalities import data_fields
from sslscale.data.shards import checks, read_shard
from sslscale.data.sources import pairs
from sslscale.data.sources.text import load_tokenizer
from sslscale.errors import SslscaleError

STAMPS, CLIPART = Path(pairs.TUXPAINT_DIR), Path(pairs.OPENCLIPART_DIR)


def _copy(src_root: Path, rel: str, dst: Path, with_caption: bool = True) -> None:
    """One real picture (and its caption, where it has one) into the folder dst at the same relative path, or to
    the file dst (a .png)."""
    out = dst if dst.suffix == ".png" else dst / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src_root / rel, out)
    if with_caption and (src_root / rel).with_suffix(".txt").is_file():
        shutil.copy((src_root / rel).with_suffix(".txt"), out.with_suffix(".txt"))


def _stamps(category: str, n: int) -> list[str]:
    found = sorted(p for p in (STAMPS / category).rglob("*.png") if p.with_suffix(".txt").is_file())
    return [p.relative_to(STAMPS).as_posix() for p in found[:n]]


def _records(out: Path, split: str = "train") -> list[tuple]:
    """(id, picture, caption words, label) of a split, decoded by the manifest's fields."""
    manifest = corpus.load_manifest(out)
    fields, tok = data_fields(manifest), load_tokenizer(str(out))
    rows = []
    for shard in manifest["splits"][split]["shards"]:
        rows += read_shard(str(out / shard["name"]), manifest["format"], **checks(shard),
                           labelled="label" in manifest["fields"], members=("image.png", "text.ids"))
    words = [tok.decode([int(t) for t in fields["text"].decode(d[1]) if t > 4]).strip() for _, d, _ in rows]
    return [(i, fields["image"].decode(d[0]), w, label) for (i, d, label), w in zip(rows, words)]


def test_a_captioned_folder_becomes_records_of_a_picture_and_its_caption(tmp_path):
    root = tmp_path / "pics"
    names = _stamps("animals", 4) + _stamps("food", 4)
    for rel in names:  # flattened into their category folder: class subfolders
        _copy(STAMPS, rel, root / rel.split("/")[0] / Path(rel).name, with_caption=True)
    (root / "animals" / "notes.md").write_text("not a caption")  # text files of no picture are not read
    assert sources.provider(str(root)) is pairs.PROVIDER
    m = corpus.prepare(str(root), tmp_path / "out", image_size=16, seq_len=24, vocab_size=300, test_fraction=0.25,
                       progress=False)
    assert m["source"]["kind"] == "captioned folder"
    assert {k: v["kind"] for k, v in m["fields"].items()} == {"image": "image", "text": "text", "label": "label"}
    assert m["fields"]["image"]["shape"] == [16, 16, 3] and m["fields"]["text"]["sample"] == "caption"
    assert m["fields"]["label"]["classes"] == ["animals", "food"]
    assert m["splits"]["train"]["samples"] == 6 and m["splits"]["test"]["samples"] == 2
    got = _records(tmp_path / "out") + _records(tmp_path / "out", "test")
    english = [(pairs.caption_of((STAMPS / rel).with_suffix(".txt").read_bytes()), rel.split("/")[0]) for rel in names]
    classes = m["fields"]["label"]["classes"]
    assert sorted((caption, classes[label]) for _, _, caption, label in got) == sorted(english)  # the English line
    assert all(picture.shape == (16, 16, 3) for _, picture, _, _ in got)
    corners = np.stack([p[[0, 0, -1, -1], [0, -1, 0, -1]] for _, p, _, _ in got])
    assert (corners > 240).mean() > 0.9  # transparent backgrounds on white


def test_a_jsonl_of_pairs_and_its_bad_lines(tmp_path):
    names = _stamps("plants", 3)
    for rel in names:
        _copy(STAMPS, rel, tmp_path / "p", with_caption=False)
    lines = [json.dumps({"image": f"p/{rel}", "text": f"  picture   number {i}  "}) for i, rel in enumerate(names)]
    (tmp_path / "pairs.jsonl").write_text("\n".join([*lines, '{"text": "no picture"}']) + "\n")
    assert sources.provider(str(tmp_path / "pairs.jsonl")) is pairs.PROVIDER
    with pytest.raises(SslscaleError, match=r'pairs.jsonl:4 is not a JSON object with "image" and "text" strings .*'
                                            r"pass --on-error skip$"):
        corpus.prepare(str(tmp_path / "pairs.jsonl"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    m = corpus.prepare(str(tmp_path / "pairs.jsonl"), tmp_path / "out", on_error="skip", image_size=8,
                       vocab_size=300, fmt="parquet", progress=False)  # a column per field
    assert m["skipped"] == [f"{tmp_path}/pairs.jsonl:4"] and m["source"]["kind"] == "captions jsonl"
    assert sorted(c for _, _, c, _ in _records(tmp_path / "out")) == [f"picture number {i}" for i in range(3)]
    (tmp_path / "missing.jsonl").write_text(json.dumps({"image": "p/none.png", "text": "a"}) + "\n")
    with pytest.raises(SslscaleError, match=r"cannot decode image .*none\.png.*: fix or remove it, or pass --on-error"):
        corpus.prepare(str(tmp_path / "missing.jsonl"), tmp_path / "out2", progress=False)


def test_openclipart_titles_and_tuxpaint_captions_categories_from_the_packages(tmp_path):
    """Subsets of the two built-ins through --path: titles cleaned into words with their topics, a duplicate and an
    oversized picture left out; categories as words, variants sharing a caption kept in one split."""
    clip = tmp_path / "clipart"
    for rel in ["animals/bison_leif_lodahl_01.png", "food/fruit/apple_bitten_dan_gerhard_01.png",
                "animals/az-lizard_benji_park_01.png", "animals/bat_orlando_karam_.png"]:
        _copy(CLIPART, rel, clip)
    chosen = sorted(p.relative_to(CLIPART).as_posix() for p in (CLIPART / "plants").rglob("*.png"))[:4]
    for rel in chosen:
        _copy(CLIPART, rel, clip)
    shutil.copy(clip / "animals" / "bison_leif_lodahl_01.png", clip / "animals" / "zz_copy.png")  # the same bytes again
    _copy(CLIPART, "food/fruit/apple_mateya_01.png", clip)  # 168 million pixels: over PIL's limit
    m = corpus.prepare("openclipart", tmp_path / "oc", path=str(clip), image_size=16, vocab_size=300, progress=False)
    assert m["source"] == {"kind": "openclipart", "path": str(clip)}
    assert m["skipped"] == [str(clip / "food/fruit/apple_mateya_01.png")] and m["splits"]["train"]["samples"] == 8
    captions = {c for _, _, c, _ in _records(tmp_path / "oc")}
    assert {"bison leif lodahl, animals", "apple bitten dan gerhard, food fruit", "az lizard benji park, animals",
            "bat orlando karam, animals"} <= captions

    stamps = tmp_path / "stamps"
    for rel in _stamps("naturalforces", 3) + _stamps("animals", 4) + ["household/tools/measuring_tape.png"]:
        _copy(STAMPS, rel, stamps)
    _copy(STAMPS, "household/tools/measuring_tape_mirror.png", stamps)  # its variant: no caption of its own
    _copy(STAMPS, "household/tools/hammer.png", stamps)
    _copy(STAMPS, "cartoon/tux/tux-drat.png", stamps)  # no caption: left out
    m = corpus.prepare("tuxpaint_captions", tmp_path / "tc", path=str(stamps), tokenizer=str(tmp_path / "oc"),
                       image_size=16, test_fraction=0.5, progress=False)
    label = m["fields"]["label"]
    assert label["classes"] == ["animals", "household", "naturalforces"]
    assert label["words"] == ["animals", "household", "natural forces"]
    assert m["fields"]["text"]["vocab_size"] == 300  # openclipart's tokenizer, as asked
    train, test = _records(tmp_path / "tc"), _records(tmp_path / "tc", "test")
    assert len(train) + len(test) == 10 and m["splits"]["test"]["samples"] == len(test) >= 3
    assert not {r[2] for r in train} & {r[2] for r in test}  # pictures that share a caption share a split
    tape = pairs.caption_of((STAMPS / "household/tools/measuring_tape.txt").read_bytes())
    assert sum(r[2] == tape for r in train + test) == 2  # the mirrored drawing shares its caption


def test_a_folder_without_captions_and_bad_options_are_one_line(tmp_path):
    _copy(STAMPS, _stamps("plants", 1)[0], tmp_path / "imgs", with_caption=False)
    assert sources.provider(str(tmp_path / "imgs")).kind == "image"  # no caption beside it: an image folder
    _copy(STAMPS, _stamps("plants", 1)[0], tmp_path / "pics")
    with pytest.raises(SslscaleError, match=r"^--path only applies to the built-in sources fmnist, "):
        corpus.prepare(str(tmp_path / "pics"), tmp_path / "o", path="/x", progress=False)
    with pytest.raises(SslscaleError, match=r"^/nowhere does not exist: install the Debian package "
                                            r"openclipart-png"):
        corpus.prepare("openclipart", tmp_path / "o", path="/nowhere", progress=False)
    with pytest.raises(SslscaleError, match=r"^--image-size 0, --seq-len 32, --vocab-size 4096: use a positive size"):
        corpus.prepare("openclipart", tmp_path / "o", image_size=0, progress=False)
    assert not (tmp_path / "o").exists()
