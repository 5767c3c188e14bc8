"""model.init (issue 29 item 6): an exported encoder starts the run's tower of its kind (a masked LM's text encoder
starts CLIP's text tower), through real exported files; a file of another kind, another architecture or another
tokenizer is refused in one line. A real 2-worker run started so is in test_e2e.py (the CLIP run)."""
import pytest
import torch
from safetensors.torch import load_file

from sslscale.data.sources.text import train_tokenizer
from sslscale.encoders.resnet import ResNet
from sslscale.encoders.text import TextTransformer
from sslscale.encoders.wav2vec import Wav2Vec
from sslscale.errors import SslscaleError
from sslscale.training.export import save_encoder, start_from

LINES = ["a cat on a mat", "a dog in the night", "a bird on a tree"]


def _clip():
    from test_clip import LENGTH, _model

    return _model(seed=1), LENGTH


def _text_file(tmp_path, length: int, dim: int = 32, tokenizer: bytes | None = None, name: str = "t") -> str:
    torch.manual_seed(7)
    text = TextTransformer(vocab_size=300, max_length=length, dim=dim, depth=1, heads=2)
    return save_encoder(text, str(tmp_path / f"{name}.encoder.safetensors"), tokenizer=tokenizer)


def test_a_text_encoder_starts_clips_text_tower_and_an_image_encoder_its_image_tower(tmp_path):
    model, length = _clip()
    tok = train_tokenizer(LINES * 3, 300).to_str().encode()
    path = _text_file(tmp_path, length, tokenizer=tok)
    image_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    assert start_from(model, path, tok) == "text tower"
    for k, v in load_file(path).items():
        assert torch.equal(model.text.state_dict()[k], v), k
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in image_before.items())  # untouched

    torch.manual_seed(9)
    image = ResNet(in_channels=3, image_size=16, widths=(8, 16), depths=(1, 1))
    assert start_from(model, save_encoder(image, str(tmp_path / "i.encoder.safetensors"))) == "encoder"
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in image.state_dict().items())


def test_a_file_that_does_not_fit_is_refused_in_one_line(tmp_path):
    model, length = _clip()
    tok = train_tokenizer(LINES * 3, 300).to_str().encode()
    other = train_tokenizer(["something else entirely"] * 3, 300).to_str().encode()
    with pytest.raises(SslscaleError, match=r"is text \(vocab_size=300, max_length=16, dim=64, .*\) but the run's "
                                            r"text tower is text \(.*dim=32.*set the run's model keys"):
        start_from(model, _text_file(tmp_path, length, dim=64, tokenizer=tok), tok)
    with pytest.raises(SslscaleError, match="another tokenizer than the corpus's .*prepare the corpus with --tokenizer"):
        start_from(model, _text_file(tmp_path, length, tokenizer=other, name="o"), tok)
    with pytest.raises(SslscaleError, match="another tokenizer .*or carries none"):
        start_from(model, _text_file(tmp_path, length, name="n"), tok)
    audio = save_encoder(Wav2Vec(sample_rate=16000, max_samples=1600, dim=16, depth=1, heads=2),
                         str(tmp_path / "a.encoder.safetensors"))
    with pytest.raises(SslscaleError, match="is an audio encoder but method CLIP has no audio tower: start it from an "
                                            "encoder of image or text"):
        start_from(model, audio)
    with pytest.raises(SslscaleError, match="does not exist: export one"):
        start_from(model, str(tmp_path / "nowhere.encoder.safetensors"))
