"""model.init (issue 29 item 6): an exported encoder starts the run's encoder of its kind (a masked LM's text
encoder starts CLIP's text tower) before the method is made around it, so an EMA teacher starts from it too;
through real exported files. A file of another kind, other weight shapes or another tokenizer is refused in one
line. A real 2-worker run started so is in test_e2e.py (the CLIP run)."""
import functools

import pytest
import torch
from safetensors.torch import load_file

from sslscale.config import Config
from sslscale.data.sources.text import train_tokenizer
from sslscale.encoders.resnet import ResNet
from sslscale.encoders.text import TextTransformer
from sslscale.encoders.wav2vec import Wav2Vec
from sslscale.errors import SslscaleError
from sslscale.methods import build_method
from sslscale.training.export import save_encoder, start_from

LINES = ["a cat on a mat", "a dog in the night", "a bird on a tree"]
IMAGES = {"in_channels": 3, "image_size": 16}


def _clip(path: str, tokenizer: bytes | None = None):
    """A tiny CLIP built with model.init's start, as a run builds it."""
    from test_clip import LENGTH, _cfg

    torch.manual_seed(1)
    return build_method(_cfg(), {"image": IMAGES, "text": {"vocab_size": 300, "max_length": LENGTH}},
                        start=functools.partial(start_from, path=path, tokenizer=tokenizer))


def _text_file(tmp_path, dim: int = 32, tokenizer: bytes | None = None, name: str = "t") -> str:
    from test_clip import LENGTH

    torch.manual_seed(7)
    text = TextTransformer(vocab_size=300, max_length=LENGTH, dim=dim, depth=1, heads=2, dropout=0.1)
    return save_encoder(text, str(tmp_path / f"{name}.encoder.safetensors"), tokenizer=tokenizer)


def _equal(module, path) -> bool:
    return all(torch.equal(module.state_dict()[k], v) for k, v in load_file(path).items())


def test_a_text_encoder_starts_clips_text_tower_and_an_image_encoder_its_image_tower(tmp_path):
    tok = train_tokenizer(LINES * 3, 300).to_str().encode()
    path = _text_file(tmp_path, tokenizer=tok)  # another dropout than CLIP's tower: the weights fit all the same
    model = _clip(path, tok)
    assert _equal(model.text, path)
    torch.manual_seed(1)
    assert _equal(model.encoder, save_encoder(ResNet(widths=(8, 16), depths=(1, 1), **IMAGES),
                                              str(tmp_path / "seed.encoder.safetensors")))  # as seed 1 made it

    torch.manual_seed(9)
    image = save_encoder(ResNet(widths=(8, 16), depths=(1, 1), **IMAGES), str(tmp_path / "i.encoder.safetensors"))
    assert _equal(_clip(image).encoder, image)


def test_an_ema_teacher_starts_from_the_file_too(tmp_path):
    torch.manual_seed(3)
    path = save_encoder(ResNet(in_channels=1, image_size=8, widths=(8,), depths=(1,)),
                        str(tmp_path / "r.encoder.safetensors"))
    cfg = Config().override(["method.name=byol", "model.widths=8", "model.depths=1"])
    byol = build_method(cfg, {"image": {"in_channels": 1, "image_size": 8}},
                        start=functools.partial(start_from, path=path))
    assert _equal(byol.encoder, path) and _equal(byol.teacher[0], path)


def test_a_file_that_does_not_fit_is_refused_in_one_line(tmp_path):
    tok = train_tokenizer(LINES * 3, 300).to_str().encode()
    other = train_tokenizer(["something else entirely"] * 3, 300).to_str().encode()
    refusals = {r"does not fit the run's text tower: \d+ weight\(s\) differ, e.g. pos \(\(1, 16, 64\) vs the run's "
                r"\(1, 16, 32\)\); give the run the file's architecture": _text_file(tmp_path, dim=64, tokenizer=tok),
                "another tokenizer than the corpus's: prepare the corpus with --tokenizer":
                    _text_file(tmp_path, tokenizer=other, name="o"),
                "carries no tokenizer .* re-export it": _text_file(tmp_path, name="n"),
                "^model.init: encoder file .* does not exist: export one":
                    str(tmp_path / "nowhere.encoder.safetensors")}
    torch.manual_seed(0)
    refusals["is an audio encoder but the run has no audio encoder: start it from an encoder of image or text"] = \
        save_encoder(Wav2Vec(sample_rate=16000, max_samples=1600, dim=16, depth=1, heads=2),
                     str(tmp_path / "a.encoder.safetensors"))
    for message, path in refusals.items():
        with pytest.raises(SslscaleError, match=message) as e:
            _clip(path, tok)
        assert "\n" not in str(e.value)


def test_a_bad_model_init_stops_a_run_before_it_opens_anything(debug_cfg, tmp_path):
    from sslscale import pretrain

    text = _text_file(tmp_path, tokenizer=b"{}")
    with pytest.raises(SslscaleError, match="is a text encoder but the run has no text encoder: start it from an "
                                            "encoder of image$"):
        pretrain(debug_cfg.override([f"model.init={text}"]))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns.db").exists()
