"""`sslscale embed` (issue 29 item 4) through real exported files: pictures, lines of text and a prepared corpus
into Parquet, each vector compared with the encoder (or CLIP's towers) called directly; bad inputs; Ray actors in
make test-long."""
import os
import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from captions import captioned_folder
from sslscale.cli import main
from sslscale.data import corpus
from sslscale.data.sources.images import square_resize
from sslscale.data.sources.pairs import picture
from sslscale.data.sources.text import train_tokenizer
from sslscale.encoders.resnet import ResNet
from sslscale.encoders.text import TextTransformer
from sslscale.errors import SslscaleError
from sslscale.evaluation.embed import embed
from sslscale.training.export import save_encoder

LINES = ["A cat sat on the mat.", "", "Dogs bark at night.", "A picture of a bird."]


def _pictures(tmp_path, n: int = 6):
    """n real stamps (RGB with transparency) in a folder, and one file that is not a picture."""
    folder = captioned_folder(tmp_path / "pics", n)
    for txt in folder.glob("*.txt"):
        txt.unlink()
    return folder


def _vectors(out) -> tuple[list, np.ndarray]:
    table = pq.read_table(out)
    keys = table.column(table.column_names[0]).to_pylist()
    return keys, np.stack(table.column("vector").to_numpy(zero_copy_only=False))


def test_pictures_round_trip_through_an_exported_encoder_and_bad_files(tmp_path):
    torch.manual_seed(0)
    encoder = ResNet(in_channels=3, image_size=16, widths=(8, 16), depths=(1, 1)).eval()
    path = save_encoder(encoder, str(tmp_path / "r.encoder.safetensors"))
    folder = _pictures(tmp_path)
    got = embed(path, str(folder), str(tmp_path / "e.parquet"), batch_size=4)  # two batches
    keys, vectors = _vectors(tmp_path / "e.parquet")
    files = sorted(folder.iterdir())
    assert got == {"rows": 6, "dim": 16, "skipped": [], "out": str(tmp_path / "e.parquet")}
    assert keys == [str(p) for p in files]
    from PIL import Image

    with torch.no_grad():
        arrays = np.stack([np.asarray(square_resize(Image.open(p).convert("RGB"), 16)) for p in files])
        direct = encoder(torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(vectors, direct, rtol=1e-5, atol=1e-6)

    (folder / "zz-broken.png").write_bytes(b"not a png")
    with pytest.raises(SslscaleError, match=r"cannot decode image .*zz-broken\.png.*pass --on-error skip$"):
        embed(path, str(folder), str(tmp_path / "bad.parquet"))
    assert not (tmp_path / "bad.parquet").exists()
    got = embed(path, str(folder), str(tmp_path / "e.parquet"), on_error="skip", overwrite=True)
    assert got["rows"] == 6 and got["skipped"] == [str(folder / "zz-broken.png")]
    with pytest.raises(SslscaleError, match="name a .parquet file that does not exist yet"):
        embed(path, str(folder), str(tmp_path / "e.parquet"))  # nothing already written is replaced


def test_lines_of_text_through_the_tokenizer_the_export_carries(tmp_path):
    tok = train_tokenizer([line for line in LINES if line] * 3, 300)
    torch.manual_seed(0)
    encoder = TextTransformer(vocab_size=tok.get_vocab_size(), max_length=12, dim=16, depth=1, heads=2).eval()
    path = save_encoder(encoder, str(tmp_path / "t.encoder.safetensors"), tokenizer=tok.to_str().encode())
    (tmp_path / "notes.txt").write_text("\n".join(LINES) + "\n")
    assert main(["embed", "--encoder", path, "--input", str(tmp_path / "notes.txt"), "--out",
                 str(tmp_path / "n.parquet")]) == 0
    keys, vectors = _vectors(tmp_path / "n.parquet")
    assert keys == [1, 3, 4]  # line numbers; the empty line is no document
    ids = np.zeros((3, 12), np.int64)
    for row, line in zip(ids, [LINES[0], LINES[2], LINES[3]]):
        got = tok.encode(line, add_special_tokens=False).ids + [3]
        row[:len(got)] = got
    with torch.no_grad():
        np.testing.assert_allclose(vectors, encoder(torch.from_numpy(ids)).numpy(), rtol=1e-5, atol=1e-6)

    old = save_encoder(encoder, str(tmp_path / "old.encoder.safetensors"))  # exported before files carried one
    with pytest.raises(SslscaleError, match="carries no tokenizer .*pass --tokenizer"):
        embed(old, str(tmp_path / "notes.txt"), str(tmp_path / "o.parquet"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "tokenizer.json").write_text(tok.to_str())
    embed(old, str(tmp_path / "notes.txt"), str(tmp_path / "o.parquet"), tokenizer=str(tmp_path / "c"))
    assert np.array_equal(_vectors(tmp_path / "o.parquet")[1], vectors)


def test_a_clip_export_embeds_pictures_and_text_into_one_space(tmp_path):
    from test_clip import _model

    model = _model(seed=5).eval()
    tok = train_tokenizer([line for line in LINES if line] * 3, 300)
    path = save_encoder(model.encoder, str(tmp_path / "c.encoder.safetensors"), method=model,
                        tokenizer=tok.to_str().encode())
    folder = _pictures(tmp_path, 4)
    embed(path, str(folder), str(tmp_path / "p.parquet"))
    (tmp_path / "notes.txt").write_text("\n".join(LINES))
    embed(path, str(tmp_path / "notes.txt"), str(tmp_path / "t.parquet"))
    _, images = _vectors(tmp_path / "p.parquet")
    _, texts = _vectors(tmp_path / "t.parquet")
    assert images.shape == (4, 16) and texts.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, rtol=1e-5)  # the joint, normalised space
    arrays = np.stack([picture(p, 16) for p in sorted(folder.iterdir())])  # padded on white, as CLIP trained
    with torch.no_grad():
        direct = model.embed_images(torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255)[1].numpy()
    np.testing.assert_allclose(images, direct, rtol=1e-5, atol=1e-6)


def test_a_prepared_corpus_is_embedded_split_by_split(data_root, tmp_path):
    torch.manual_seed(0)
    encoder = ResNet(in_channels=1, image_size=8, widths=(8,), depths=(1,)).eval()
    path = save_encoder(encoder, str(tmp_path / "d.encoder.safetensors"))
    digits = os.path.join(data_root, "digits")
    got = embed(path, digits, str(tmp_path / "d.parquet"))
    table = pq.read_table(tmp_path / "d.parquet")
    manifest = corpus.load_manifest(digits)
    assert got["rows"] == sum(s["samples"] for s in manifest["splits"].values()) == table.num_rows
    assert table.column_names == ["split", "id", "vector"]
    ids, images, _ = corpus.read_split(digits, "test")
    test = table.filter(pc.equal(table["split"], "test"))
    assert test.column("id").to_pylist() == ids.tolist()
    with torch.no_grad():
        direct = encoder(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(np.stack(test.column("vector").to_numpy(zero_copy_only=False)), direct, rtol=1e-5,
                               atol=1e-6)
    tok = train_tokenizer(LINES, 300).to_str().encode()
    text = save_encoder(TextTransformer(vocab_size=300, max_length=8, dim=8, depth=1, heads=2),
                        str(tmp_path / "x.encoder.safetensors"), tokenizer=tok)
    with pytest.raises(SslscaleError, match="is a folder but the model embeds text: pass a text file"):
        embed(text, str(tmp_path), str(tmp_path / "x.parquet"))
    with pytest.raises(SslscaleError, match="input .*nowhere does not exist"):
        embed(path, str(tmp_path / "nowhere"), str(tmp_path / "y.parquet"))


@pytest.mark.long
def test_two_ray_actors_embed_what_one_process_does(tmp_path):
    """--workers 2: Ray Data actors (one CPU each) load the export once and embed batches; the rows, in key order,
    equal the in-process ones, and a bad file is left out the same way."""
    torch.manual_seed(0)
    encoder = ResNet(in_channels=3, image_size=16, widths=(8, 16), depths=(1, 1)).eval()
    path = save_encoder(encoder, str(tmp_path / "r.encoder.safetensors"))
    folder = _pictures(tmp_path, 12)
    shutil.copy(folder / sorted(os.listdir(folder))[0], folder / "a-copy.png")
    (folder / "zz-broken.png").write_bytes(b"not a png")
    here = embed(path, str(folder), str(tmp_path / "here.parquet"), on_error="skip")
    from sslscale.runtime.cluster import shutdown

    try:
        assert main(["embed", "--encoder", path, "--input", str(folder), "--out", str(tmp_path / "ray.parquet"),
                     "--workers", "2", "--batch-size", "4", "--on-error", "skip"]) == 0
    finally:
        shutdown()
    assert here["skipped"] == [str(folder / "zz-broken.png")]
    a, b = _vectors(tmp_path / "here.parquet"), _vectors(tmp_path / "ray.parquet")
    assert a[0] == b[0] and np.allclose(a[1], b[1], rtol=1e-5, atol=1e-6)
