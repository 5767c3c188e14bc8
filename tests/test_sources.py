"""Where samples come from (sslscale/sources): a built-in name or a folder goes to its kind's provider, each kind
takes its own options, and an option of another kind is one line before anything is written."""
import pytest

from sslscale.data import corpus, sources
from sslscale.data.sources import audio, images, text
from sslscale.errors import SslscaleError


def test_a_name_or_a_folder_goes_to_its_kinds_provider(tmp_path):
    assert sources.provider("digits") is images.PROVIDER and sources.provider("pydocs") is text.PROVIDER
    (tmp_path / "docs" / "a").mkdir(parents=True)
    (tmp_path / "docs" / "a" / "x.md").write_text("Some words.")
    assert sources.provider(str(tmp_path / "docs")) is text.PROVIDER
    (tmp_path / "docs" / "a" / "y.png").write_bytes(b"")  # images and text files together: an image folder
    assert sources.provider(str(tmp_path / "docs")) is images.PROVIDER
    (tmp_path / "speech").mkdir()
    (tmp_path / "speech" / "1.flac").write_bytes(b"")
    (tmp_path / "speech" / "1.txt").write_text("its transcript")  # audio and transcripts: an audio folder
    assert sources.provider(str(tmp_path / "speech")) is audio.PROVIDER
    with pytest.raises(SslscaleError, match=r"source '.*/nowhere' is neither a built-in \(fmnist, digits, "
                                            r"tuxpaint_speech, pydocs, bbcnews, openclipart, tuxpaint_captions\) nor an "
                                            r"existing folder"):
        sources.provider(str(tmp_path / "nowhere"))


def test_an_option_of_another_kind_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(SslscaleError, match=r"^--seq-len does not apply to image source 'digits' \(it takes --path, "
                                            r"--image-size\): leave it out$"):
        corpus.prepare("digits", tmp_path / "out", seq_len=64, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SslscaleError, match="--image-size does not apply to text source"):
        corpus.prepare("pydocs", tmp_path / "out", image_size=16, progress=False)
    m = corpus.prepare("digits", tmp_path / "out", seq_len=None, image_size=None, progress=False)  # None: default
    assert m["fields"]["image"] == {"kind": "image", "encoding": "png", "shape": [8, 8, 1], "dtype": "uint8"}
