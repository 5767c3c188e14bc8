"""The fine-tuning protocol and the from-scratch baseline (finetune.py): per-parameter learning rates (the encoder's
scale, ViT layer-wise decay), the validation slice, the seeded batches, and a real run through `sslscale evaluate`
(the DeepSpeed engine, real digits shards) with every score name and a one-line error."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from sslscale.checks import validate

from sslscale.config import Config
from sslscale.data.modalities import Image, Text
from sslscale.encoders import build_encoder
from sslscale.errors import SslscaleError
from sslscale.evaluation.finetune import Classifier, _batches, _candidates, _split
from sslscale.evaluation.transfer import PICTURES
from sslscale.training.export import save_encoder
from sslscale.training.optim import param_groups

SSLSCALE = os.path.join(os.path.dirname(sys.executable), "sslscale")


DIGITS = Image("image", {"kind": "image", "encoding": "png", "shape": [8, 8, 1], "dtype": "uint8"})
PASSAGES = Text("text", {"kind": "text", "encoding": "ids", "dtype": "uint16", "max_length": 12, "vocab_size": 300})


def _vit(depth=3):
    return build_encoder("vit", in_channels=1, image_size=8, patch_size=2, dim=8, depth=depth, heads=2)


def test_encoder_scale_and_vit_layer_decay_give_each_parameter_its_rate():
    model = Classifier(_vit(), 10, Config(), DIGITS, encoder_scale=0.1, layer_decay=0.5)
    assert model.lr_scale("head.weight") == 1.0
    assert model.lr_scale("encoder.norm.weight") == pytest.approx(0.1)  # the last layer: no decay
    assert model.lr_scale("encoder.blocks.2.qkv.weight") == pytest.approx(0.1 * 0.5)
    assert model.lr_scale("encoder.blocks.0.qkv.weight") == pytest.approx(0.1 * 0.5**3)
    assert model.lr_scale("encoder.patch_embed.weight") == pytest.approx(0.1 * 0.5**4)
    groups = param_groups(model, 0.05, lr=1e-3)
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    head = next(g for g in groups if any(p is model.head.weight for p in g["params"]))
    assert head["lr"] == pytest.approx(1e-3) and head["decay"]
    resnet = Classifier(build_encoder("resnet", in_channels=1, image_size=8, widths=(4, 8), depths=(1, 1)), 10,
                        Config(), DIGITS, encoder_scale=0.1, layer_decay=0.5)  # no blocks to decay over: one scale
    assert {round(g["lr"], 8) for g in param_groups(resnet, 0.05, lr=1e-3)} == {1e-3, 1e-4}


def test_a_model_without_scales_keeps_the_two_groups_checkpoints_hold():
    enc = build_encoder("resnet", in_channels=1, image_size=8, widths=(4, 8), depths=(1, 1))
    groups = param_groups(enc, 0.05)
    assert [g["decay"] for g in groups] == [True, False] and all("lr" not in g for g in groups)


def test_validation_slice_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [30, 20, 10, 1])
    idx = np.arange(len(labels))
    fit, val = _split(labels, idx, 0.1, seed=0)
    assert np.intersect1d(fit, val).size == 0 and np.union1d(fit, val).size == len(idx)
    assert np.bincount(labels[val], minlength=4).tolist() == [3, 2, 1, 0]  # a class of one stays in training
    assert np.array_equal(val, _split(labels, idx, 0.1, seed=0)[1])
    assert not np.array_equal(val, _split(labels, idx, 0.1, seed=1)[1])


def test_batches_are_full_seeded_and_cover_a_subset_smaller_than_a_batch():
    images = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(50) % 5
    idx = np.arange(0, 50, 10)  # 5 samples, batch 8: each batch repeats some
    one, two = (list(_batches(DIGITS, images, labels, idx, 8, 3, seed=0)),
                list(_batches(DIGITS, images, labels, idx, 8, 3, seed=0)))
    assert [b["view_0"].shape for b in one] == [(8, 1, 8, 8)] * 3
    assert all(np.array_equal(a["view_0"], b["view_0"]) and torch.equal(a["label"], b["label"])
               for a, b in zip(one, two))
    assert set(torch.cat([b["label"] for b in one]).tolist()) == {0}  # only idx's labels (all class 0)
    views = one[0]["view_0"]  # 8 views of 5 samples: the repeats come from another epoch, so they differ
    assert len({v.tobytes() for v in views}) == 8
    tokens = np.random.default_rng(0).integers(0, 300, (50, 12)).astype(np.uint16)  # a text target: ids as they are
    text = list(_batches(PASSAGES, tokens, labels, idx, 8, 3, seed=0))
    assert list(text[0]) == ["tokens", "label"] and text[0]["tokens"].dtype == np.int64
    rows = {row.tobytes() for row in tokens[idx].astype(np.int64)}
    assert all(row.tobytes() in rows for b in text for row in b["tokens"])  # idx's passages, unchanged


def test_candidates_and_bad_values_are_one_line():
    cfg = validate(Config().override(["transfer.finetune_encoder_lr_scales=0.1,1", "transfer.finetune_layer_decays=0.75",
                                      "transfer.scratch_lrs=1e-3"]))
    resnet = build_encoder("resnet", in_channels=1, image_size=8, widths=(4, 8), depths=(1, 1))
    assert [(c["encoder_scale"], c["layer_decay"]) for c in _candidates(cfg.transfer, resnet)] == [(0.1, 1.0), (1.0, 1.0)]
    assert [c["layer_decay"] for c in _candidates(cfg.transfer, _vit())] == [0.75, 0.75]  # decay: ViTs only
    assert _candidates(cfg.transfer, None) == [{"lr": 1e-3}]
    for item, allowed in [("transfer.finetune_layer_decays=1.5", "comma-separated decays in"),
                          ("transfer.scratch_lrs=fast", "comma-separated positive learning rates"),
                          ("transfer.val_fraction=1", "a fraction in"), ("transfer.protocols=finetune,probe", "knn"),
                          ("transfer.embedding_map=umap", "one of tsne, pca, none"),
                          ("transfer.finetune_workers=3", "a multiple of transfer.finetune_workers=3")]:
        key = "transfer.finetune_batch_size" if "workers" in item else item.partition("=")[0]
        with pytest.raises(SslscaleError, match=rf"^bad value for {key}: must be .*{allowed}"):
            validate(Config().override([item]))


def test_finetune_and_scratch_score_digits_through_the_cli(tmp_path, data_root):
    torch.manual_seed(0)
    enc = build_encoder("resnet", in_channels=1, image_size=8, widths=(8, 16), depths=(1, 1))
    path = save_encoder(enc, str(tmp_path / "demo.encoder.safetensors"))
    env = {**os.environ, "SSLSCALE_DATA": data_root}
    args = ["evaluate", "--checkpoint", path, "--target", "digits", "--no-baseline", "--protocol",
            "knn,linear,finetune,scratch", "--label-fractions", "0.2,1.0", "transfer.finetune_steps=60",
            "transfer.finetune_batch_size=64", "transfer.finetune_lr=1e-2", "transfer.finetune_encoder_lr_scales=1.0",
            "transfer.scratch_lrs=1e-2",
            "--out", str(tmp_path / "ev")]
    done = subprocess.run([SSLSCALE, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    scores = dict(re.findall(r"^  (digits/\S+)\s+([\d.]+)$", done.stdout, re.M))
    assert set(scores) == {f"digits/{p}_top1{s}" for p in ("knn", "linear", "finetune", "scratch")
                           for s in ("", "/frac0.2")} | {f"digits/{p}_balanced{s}" for p in ("knn", "linear")
                                                         for s in ("", "/frac0.2")} | {"digits/majority"}
    assert all(0 <= float(v) <= 1 for v in scores.values())
    assert float(scores["digits/finetune_top1"]) > 0.4 and float(scores["digits/scratch_top1"]) > 0.4  # chance 0.1
    assert re.search(r"^digits finetune_top1/frac0\.2: 0\.\d+ with \{'lr': 0\.01, 'encoder_scale': 1\.0", done.stdout,
                     re.M) and re.search(r"scored in \d+ s", done.stdout)  # one candidate: no validation slice
    assert re.search(r"with 20% of the labels, fine-tuning the pretrained encoder reaches 0\.\d+ where training "
                     r"from scratch reaches 0\.\d+", done.stdout)
    pictures = [str(tmp_path / "ev" / name) for name in PICTURES]  # confusion matrix, embedding map, label efficiency
    assert done.stdout.endswith("plots:\n" + "".join(f"  {p}\n" for p in pictures))
    assert all(os.path.getsize(p) > 10_000 for p in pictures)

    bad = subprocess.run([SSLSCALE, "evaluate", "--checkpoint", path, "--target", "digits", "--protocol", "finetune",
                          "train.steps=5"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].endswith(
        "takes transfer.* overrides and train.use_gpu, train.cpus_per_worker, train.threads_per_worker, "
        "train.worker_resources, train.storage, not train.steps: e.g. transfer.finetune_steps=300")


def test_efficiency_curves_table_and_headline_from_score_names(tmp_path):
    from sslscale.evaluation.transfer import efficiency, efficiency_plot, efficiency_table

    scores = {"fmnist/knn_top1": 0.83, "fmnist/knn_top1/frac0.01": 0.70, "fmnist/finetune_top1": 0.90,
              "fmnist/finetune_top1/frac0.01": 0.75, "fmnist/scratch_top1/frac0.01": 0.60, "fmnist/scratch_top1": 0.91,
              "fmnist/random_init/knn_top1/frac0.01": 0.5, "fmnist/pixels/knn_top1": 0.84, "fmnist/seconds": 3.0}
    assert efficiency(scores) == {"knn": {1.0: 0.83, 0.01: 0.70}, "finetune": {1.0: 0.90, 0.01: 0.75},
                                  "scratch": {0.01: 0.60, 1.0: 0.91}, "random_init/knn": {0.01: 0.5}}
    table = efficiency_table(scores)
    assert table.splitlines()[0].split() == ["protocol", "0.01", "labels", "1", "labels"]
    assert table.splitlines()[-1] == ("with 1% of the labels, fine-tuning the pretrained encoder reaches 0.7500 where "
                                      "training from scratch reaches 0.6000 (+0.1500)")
    assert efficiency_plot(scores, str(tmp_path / "le.png")) == str(tmp_path / "le.png")
    assert efficiency_plot({"fmnist/knn_top1": 0.8}, str(tmp_path / "one.png")) is None  # one fraction: no curve


def test_a_stream_that_runs_dry_is_an_error_not_a_less_trained_model():
    from sslscale.config import TransferConfig
    from sslscale.evaluation.finetune import train

    torch.manual_seed(0)
    enc = build_encoder("resnet", in_channels=1, image_size=8, widths=(4, 8), depths=(1, 1))
    batch = {"view_0": torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8), "label": torch.arange(8) % 3}
    tcfg = TransferConfig(finetune_steps=3, finetune_batch_size=8)
    with pytest.raises(SslscaleError, match="got 1 batches for transfer.finetune_steps=3: its labelled stream"):
        train(enc, 3, 0, iter([batch]), Config(), tcfg, field=DIGITS, lr=1e-2)


def test_evaluate_fine_tunes_on_the_runs_engine_and_this_machines_workers():
    from sslscale.cli import evaluate_config

    run = Config().override(["engine.zero_stage=3", "engine.precision=fp32", "train.use_gpu=true",
                             "train.cpus_per_worker=8"]).to_dict()
    cfg = evaluate_config(run, ["transfer.protocols=finetune"], ["transfer.finetune_workers=2", "train.use_gpu=false"])
    assert (cfg.engine.zero_stage, cfg.engine.precision) == (3, "fp32")  # trains as the run did
    assert (cfg.train.use_gpu, cfg.train.cpus_per_worker) == ("false", Config().train.cpus_per_worker)  # here
    assert cfg.transfer.protocols == "finetune" and cfg.transfer.finetune_workers == 2
    assert evaluate_config({}, [], []).engine == Config().engine  # a bare encoder file: the defaults


def test_learning_rates_follow_scale_and_freeze_per_group():
    from sslscale.training.optim import set_learning_rates

    opt = torch.optim.SGD([{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)], "lr_scale": 0.1},
                           {"params": [torch.zeros(1)], "frozen_steps": 3}], lr=1.0)
    set_learning_rates(opt, 0.5, step=2)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.05, 0.0]
    set_learning_rates(opt, 0.5, step=3)  # the 4th step: the frozen group learns
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.05, 0.5]


def test_a_text_encoder_fine_tunes_on_token_ids_through_the_engine():
    """Text targets: the classifier reads token ids (no augmentation) through the real DeepSpeed engine, fine-tuned
    and from scratch; layer-wise decay counts the token embedding and positions as layer 0."""
    from sslscale.config import TransferConfig
    from sslscale.evaluation.finetune import top1

    encoder = build_encoder("text", vocab_size=40, max_length=12, dim=16, depth=2, heads=2)
    model = Classifier(encoder, 2, Config(), Text("text", {**PASSAGES.entry, "vocab_size": 40}), encoder_scale=0.1,
                       layer_decay=0.5)
    assert model.inputs(Config(), model.sizes()) == {"tokens": "ids", "label": "ids"}
    assert model.lr_scale("encoder.embed.weight") == model.lr_scale("encoder.pos") == pytest.approx(0.1 * 0.5**3)
    assert model.lr_scale("encoder.blocks.1.qkv.weight") == pytest.approx(0.1 * 0.5)
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 2
    tokens = np.where(labels[:, None] == 0, rng.integers(5, 20, (120, 12)), rng.integers(20, 40, (120, 12)))
    tokens[::3, 8:] = 0  # padding
    data = {"classes": 2, "seed": 0, "field": model.data, "train": (tokens[:80].astype(np.uint16), torch.as_tensor(labels[:80])),
            "test": (tokens[80:].astype(np.uint16), torch.as_tensor(labels[80:]))}
    tcfg = TransferConfig(finetune_steps=20, finetune_batch_size=16, finetune_lr=3e-3,
                          finetune_encoder_lr_scales="1", finetune_layer_decays="1", scratch_lrs="3e-3")
    assert top1(encoder, data, np.arange(80), Config(), tcfg, encoder.spec())[0] > 0.9
    assert top1(None, data, np.arange(80), Config(), tcfg, encoder.spec())[0] > 0.9
