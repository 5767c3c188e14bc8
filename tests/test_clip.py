"""CLIP (issue 29 item 2) on real pictures and captions (Tux Paint's stamps): the loss against its formula in
float64, two workers against one process, the towers built from the method's section and the corpus's fields, and a
tiny model that learns to match pairs."""
import copy
import math

import numpy as np
import pytest
import torch

from captions import captioned
from distributed import spawn_gloo
from sslscale.config import Config
from sslscale.data.modalities.image import ImageLayout
from sslscale.data.sources import pairs
from sslscale.data.sources.text import train_tokenizer
from sslscale.data.views import ViewSpec, batch_views
from sslscale.methods import build_method, kinds_read
from sslscale.methods.clip import CLIP

SIZE, LENGTH = 16, 16


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n real stamps with distinct captions: pictures uint8 (n, SIZE, SIZE, 3), caption ids int64 (n, LENGTH)."""
    every = captioned()
    found = [(p, pairs.caption_of(p.with_suffix(".txt").read_bytes())) for p in every[::len(every) // n][:n]]
    tok = train_tokenizer([c for _, c in found], 300)
    ids = np.zeros((n, LENGTH), np.int64)
    for row, (_, caption) in zip(ids, found):
        got = tok.encode(caption, add_special_tokens=False).ids[:LENGTH - 1] + [3]
        row[:len(got)] = got
    return np.stack([pairs.picture(p, SIZE) for p, _ in found]), ids


def _cfg(**section) -> Config:
    keys = {"text_dim": 32, "text_depth": 1, "text_heads": 2, "embed_dim": 16, **section}
    return Config().override(["method.name=clip", "model.widths=8,16", "model.depths=1,1",
                              *[f"method.clip.{k}={v}" for k, v in keys.items()]])


def _model(seed: int = 0, **section) -> CLIP:
    torch.manual_seed(seed)
    return build_method(_cfg(**section), {"image": {"in_channels": 3, "image_size": SIZE},
                                          "text": {"vocab_size": 300, "max_length": LENGTH}})


def _batch(images: np.ndarray, ids: np.ndarray, epoch: int = 0) -> dict:
    """The stream's fields for these pairs: one cropped and flipped view of each picture, the caption as it is."""
    layout = CLIP.views(None, {})["image"]
    views = batch_views(images, np.arange(len(images)), seed=0, epoch=epoch, spec=ViewSpec(size=SIZE, jitter_prob=0,
                        grayscale=0), **vars(layout))
    return {"view_0": torch.as_tensor(views["view_0"]).float() / 255, "tokens": torch.as_tensor(ids)}


def test_the_towers_come_from_the_section_and_the_corpus_fields(data_root):
    import os

    from sslscale.errors import SslscaleError
    from sslscale.pretraining import _data_fields

    digits = os.path.join(data_root, "digits")
    with pytest.raises(SslscaleError, match=f"^method.name=clip trains on text but corpus {digits} holds images: "):
        _data_fields(digits, _cfg())
    model = _model(text_dim=48, text_depth=3, text_heads=4)
    assert kinds_read(_cfg()) == ("image", "text") and CLIP.views(None, {})["image"] == ImageLayout(n_views=1)
    assert model.encoder.spec()["name"] == "resnet" and model.encoder.in_channels == 3
    assert model.text.spec() == {"name": "text", "vocab_size": 300, "max_length": LENGTH, "feature_dim": 48,
                                 "kwargs": {**model.text.spec()["kwargs"], "dim": 48, "depth": 3, "heads": 4}}
    assert model.sizes() == {"image": SIZE, "text": LENGTH}
    assert CLIP.inputs(_cfg(), {}) == {"view_0": "pixels", "tokens": "ids"}
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def _reference(image: torch.Tensor, text: torch.Tensor, scale: float) -> float:
    """CLIP's loss written out pair by pair (the paper's Figure 3): the mean of both directions' -log softmax."""
    terms = []
    for i in range(len(image)):
        to_text = torch.stack([scale * image[i] @ t for t in text])
        to_image = torch.stack([scale * text[i] @ m for m in image])
        terms += [torch.logsumexp(to_text, 0) - to_text[i], torch.logsumexp(to_image, 0) - to_image[i]]
    return (torch.stack(terms).sum() / (2 * len(image))).item()


def test_loss_equals_the_reference_formula_in_float64():
    model = _model().double()
    images, ids = _pairs(8)
    batch = _batch(images, ids)
    batch["view_0"] = batch["view_0"].double()
    out = model(batch)
    assert out["loss"].dtype == torch.float64
    _, image = model.embed_images(batch["view_0"])
    text = model.embed_texts(batch["tokens"])
    scale = model.logit_scale.exp().item()  # 1 / 0.07 as its float32 parameter holds it
    assert out["loss"].item() == pytest.approx(_reference(image, text, scale), rel=1e-12)
    assert out["logit_scale"].item() == scale == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(250.0))  # learnt past the clamp: the logits stop at 100
    assert model(batch)["loss"].item() == pytest.approx(_reference(image, text, 100.0), rel=1e-12)


def _worker(rank, world, model, batch):
    model = copy.deepcopy(model)
    out = model({k: v.chunk(world)[rank] for k, v in batch.items()})
    out["loss"].backward()
    return out["loss"].item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_two_workers_equal_one_process():
    """Each worker scores its 4 pairs against all 8 columns; the mean of their losses and gradients (DeepSpeed's
    average) is one process's on the 8 pairs. The ResNet's BatchNorm normalises each worker's batch, as DeepSpeed
    runs it: eval mode (its running statistics) keeps that out of the comparison."""
    model = _model(seed=3).eval()
    images, ids = _pairs(8)
    batch = _batch(images, ids)
    results = spawn_gloo(_worker, model, batch, world=2)
    whole = copy.deepcopy(model)
    out = whole(batch)
    out["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in whole.parameters() if p.grad is not None])
    assert (results[0][0] + results[1][0]) / 2 == pytest.approx(out["loss"].item(), rel=1e-5)
    assert torch.allclose((results[0][1] + results[1][1]) / 2, grads, atol=1e-6, rtol=1e-4)
    assert grads[-1] != 0  # the temperature is learnt too


def test_a_tiny_model_learns_to_match_pairs():
    """120 AdamW steps on 32 real pictures and their captions: the picture -> caption top-1 among the 32, on fresh
    crops, rises from chance to most pairs, and the loss falls well below log 32."""
    images, ids = _pairs(32)
    model = _model(seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def top1(epoch):
        model.eval()
        with torch.no_grad():
            batch = _batch(images, ids, epoch)
            _, image = model.embed_images(batch["view_0"])
            hits = (image @ model.embed_texts(batch["tokens"]).T).argmax(1) == torch.arange(len(ids))
        model.train()
        return hits.float().mean().item()

    before = top1(1000)
    for step in range(120):
        out = model(_batch(images, ids, epoch=step))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert before < 0.2 and top1(1001) > 0.6
    assert out["loss"].item() < 0.5 * math.log(32)


def test_recall_counts_a_shared_caption_as_a_match_and_chance_is_exact():
    from sslscale.evaluation.zeroshot import _same_caption, chance_recall, recall

    captions = np.array([[7, 3, 0], [8, 3, 0], [7, 3, 0], [9, 3, 0]])  # items 0 and 2 share a caption
    same = _same_caption(captions)
    assert same.tolist() == [[True, False, True, False], [False, True, False, False],
                             [True, False, True, False], [False, False, False, True]]
    sim = torch.tensor([[0.1, 0.2, 0.9, 0.0],   # item 0's best is item 2: the same caption, a hit at 1
                        [0.9, 0.1, 0.8, 0.7],   # item 1's own is last: a hit at 4 only
                        [0.5, 0.4, 0.3, 0.2],
                        [0.1, 0.2, 0.3, 0.4]])
    assert [recall(sim, same, k) for k in (1, 2, 4)] == [0.75, 0.75, 1.0]
    # random ranking of 4: one match in top 1 with p 1/4, two matches with p 1/2
    assert chance_recall(same, 1) == pytest.approx((0.5 + 0.25 + 0.5 + 0.25) / 4)
    assert chance_recall(same, 10) == 1.0  # k beyond the split: every item


def test_prompts_and_the_words_the_tokenizer_splits():
    from sslscale.evaluation.zeroshot import TEMPLATES, prompt_ids, split_words

    tok = train_tokenizer(["a picture of a cat.", "a drawing of a cat.", "a photo of a cat.", "clip art of a cat."],
                          300)
    ids = prompt_ids(tok, ["cat", "natural forces"], 12)
    assert ids.shape == (2 * len(TEMPLATES), 12) and (ids[:, 0] > 4).all()
    assert tok.decode([int(i) for i in ids[0] if i > 4]).strip() == "a picture of a cat."
    assert all(3 in row for row in ids)  # each ends in [SEP], as a prepared caption does
    assert split_words(tok, ["cat", "natural", "forces"]) == 2  # never seen: pieces


def test_the_export_holds_both_towers_and_the_tokenizer_and_older_files_still_load(tmp_path):
    from sslscale.errors import SslscaleError
    from sslscale.training.export import (fresh_like, has_method, load_encoder, load_model, load_tokenizer,
                                          save_encoder)

    model = _model(seed=4).eval()
    images, ids = _pairs(8)
    tok = train_tokenizer(["a cat.", "a dog."], 300)
    path = save_encoder(model.encoder, str(tmp_path / "clip.encoder.safetensors"), method=model,
                        tokenizer=tok.to_str().encode())
    batch = _batch(images, ids)
    back = load_model(path)
    with torch.no_grad():
        assert torch.equal(model.embed_images(batch["view_0"])[1], back.embed_images(batch["view_0"])[1])
        assert torch.equal(model.encoder(batch["view_0"]), load_encoder(path)(batch["view_0"]))
        assert torch.equal(model.embed_texts(batch["tokens"]), back.embed_texts(batch["tokens"]))
        assert not torch.equal(fresh_like(model).embed_texts(batch["tokens"]), back.embed_texts(batch["tokens"]))
    assert has_method(path) and load_tokenizer(path).to_str() == tok.to_str()
    old = save_encoder(model.encoder, str(tmp_path / "old.encoder.safetensors"))  # an encoder alone, as before
    assert not has_method(old) and load_tokenizer(old) is None and load_encoder(old).spec() == model.encoder.spec()
    with pytest.raises(SslscaleError, match="holds an encoder alone, not a method with towers"):
        load_model(old)


def test_a_target_whose_captions_the_text_tower_cannot_read_is_refused_before_training(tmp_path):
    """A captioned target with longer captions, or another tokenizer, than the pretraining corpus: one line each,
    before anything starts; tuxpaint_captions takes the corpus's caption length with its tokenizer by default."""
    from captions import captioned_folder, stamps_subset
    from sslscale.data import corpus
    from sslscale.errors import SslscaleError
    from sslscale.pretraining import preflight

    pics, pics2, stamps = tmp_path / "pics", tmp_path / "pics2", stamps_subset(tmp_path / "stamps", 3)
    corpus.prepare(str(captioned_folder(tmp_path / "folder", 24)), pics, image_size=16, seq_len=16, vocab_size=300,
                   progress=False)
    corpus.prepare(str(tmp_path / "folder"), tmp_path / "pics2", image_size=16, seq_len=16, vocab_size=200,
                   progress=False)  # the same captions, another vocabulary: another tokenizer
    for name, options in (("long", {"seq_len": 24, "tokenizer": str(pics)}), ("other", {"tokenizer": str(pics2)}),
                          ("fits", {"tokenizer": str(pics)})):
        corpus.prepare("tuxpaint_captions", tmp_path / name, path=str(stamps), image_size=16, progress=False,
                       **options)
    cfg = _cfg().override([f"data.corpus={pics}", "transfer.protocols=knn"])
    with pytest.raises(SslscaleError, match=r"holds passages of up to 24 tokens but the encoder takes the corpus' 16: "
                                            r"prepare it with --seq-len 16$"):
        preflight(cfg.override([f"transfer.target={tmp_path / 'long'}"]))
    with pytest.raises(SslscaleError, match="was tokenised with another tokenizer than corpus"):
        preflight(cfg.override([f"transfer.target={tmp_path / 'other'}"]))
    assert preflight(cfg.override([f"transfer.target={tmp_path / 'fits'}"]))[1] == {
        "image": {"in_channels": 3, "image_size": 16}, "text": {"vocab_size": 300, "max_length": 16}}
