"""Real end-to-end runs: Ray Train with 2 workers, DeepSpeed ZeRO-1, Ray Data, an sqlite MLflow store, real files.

Slow (tens of seconds each); `make test` runs them, and the runs of minutes are `long` (make test-long)."""
import json
import math
import os

import pytest

from sslscale.runtime import tracking
from sslscale.training.export import load_encoder

pytestmark = pytest.mark.slow


def test_pretrain_function_logs_everything(debug_cfg, ray_local):
    from sslscale import pretrain

    result = pretrain(debug_cfg.override(["train.log_every=4", "transfer.protocols=knn,linear,finetune",
                                          "transfer.finetune_steps=30", "transfer.finetune_encoder_lr_scales=1",
                                          "transfer.finetune_lr=1e-2", "transfer.finetune_workers=2"]))
    uri, run_id = result.tracking_uri, result.run_id
    run = tracking.get_run(uri, run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.workers"] == "2"
    assert run.info.run_name == "debug: simclr on digits"  # what it is, not MLflow's random name
    # the corpus and the target as the run's dataset inputs (MLflow's "Datasets" on the run page)
    datasets = {t.value: d.dataset for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
    assert {k: (d.name, json.loads(d.schema)) for k, d in datasets.items()} == {
        "training": ("digits", {"image": "image", "label": "label"})}  # its target is the same corpus: once
    assert json.loads(datasets["training"].source)["kind"] == "digits" and len(datasets["training"].digest) == 12
    for key in ("loss", "samples_per_s", "skipped"):  # every train.log_every steps, and the last step
        assert [s for s, _ in tracking.history(uri, run_id, key)] == [4, 6], key
    assert [s for s, _ in tracking.history(uri, run_id, "lr")] == [2, 4, 6]  # with every step that logs anything
    assert [s for s, _ in tracking.history(uri, run_id, "health/rankme")] == [2, 4, 6]
    for key in ("spectrum/eig_01", "spectrum/erank"):  # the fixed probe set's spectrum, on the health steps
        assert [s for s, _ in tracking.history(uri, run_id, key)] == [2, 4, 6], key
    assert 1 <= run.data.metrics["spectrum/erank"] <= 16  # the debug encoder's 16 features
    assert run.data.metrics["spectrum/eig_32"] == 0.0  # train.spectrum_k=32 > 16 features: padded
    assert {"digits/knn_top1", "digits/linear_top1", "digits/finetune_top1", "digits/random_init/knn_top1",
            "digits/seconds"} <= {k.removeprefix("transfer/") for k in run.data.metrics}  # fine-tuned on 2 workers
    assert 0.2 < run.data.metrics["transfer/digits/finetune_top1"] <= 1  # chance: 0.1
    # where the fixed time went, by phase, in the result and in the run (timeline.py)
    assert {"startup/worker_group_s", "startup/engine_init_s", "winddown/total_s"} <= set(result.timings)
    assert run.data.metrics.keys() >= result.timings.keys() and 0 < result.timings["startup/total_s"] < 600
    artifacts = {a.path for a in tracking.client(uri).list_artifacts(run_id)}
    assert {"config.json", "curves.png", "spectrum.png", "encoder", "confusion_matrix.png",
            "embedding_map.png"} <= artifacts  # one label fraction: no label-efficiency curve
    assert all(os.path.isfile(os.path.join(result.run_dir, f)) for f in ("spectrum.png", "embedding_map.png"))
    enc = load_encoder(result.encoder_path)
    assert (enc.in_channels, enc.image_size) == (1, 8)

    # scored again later by run id: the scores and pictures reach the same run
    from sslscale.cli import main

    out = os.path.join(result.run_dir, "evaluation")
    assert main(["evaluate", "--run", run_id, "--tracking-uri", uri, "--target", "digits", "--no-baseline",
                 "--protocol", "linear", "--label-fractions", "0.5,1.0", "--out", out]) == 0
    run = tracking.get_run(uri, run_id)
    assert run.data.metrics["transfer/digits/linear_top1/frac0.5"] > 0.1  # chance
    artifacts = {a.path for a in tracking.client(uri).list_artifacts(run_id)}
    assert "label_efficiency.png" in artifacts and os.path.isfile(os.path.join(out, "label_efficiency.png"))


def test_labelled_stream_is_the_in_process_batches(data_root, monkeypatch, ray_local):
    """Fine-tuning on Ray Train workers reads evaluation's labelled Ray Data stream: the same views and labels,
    in the same order, as the in-process batches."""
    import numpy as np

    from sslscale.data.stream import in_order, labelled_views
    from sslscale.evaluation.finetune import VIEWS, _batches, _order
    from sslscale.evaluation.transfer import load_target

    monkeypatch.setenv("SSLSCALE_DATA", data_root)
    import ray.data

    options = ray.data.DataContext.get_current().execution_options
    monkeypatch.setattr(options, "preserve_order", in_order().preserve_order)  # as fine-tuning's ingest does
    target = load_target("digits")
    (images, labels), field = target["train"], target["field"]
    idx = np.arange(3, 40)
    order, view_ids = _order(idx, len(images), 16, 5, seed=7)
    rows = labelled_views(field, images, labels.numpy(), order, view_ids, VIEWS, 7, 16).take_batch(80)
    local = list(_batches(field, images, labels.numpy(), idx, 16, 5, seed=7))
    assert (rows["view_0"] == np.concatenate([b["view_0"] for b in local])).all()
    assert (rows["label"] == np.concatenate([b["label"].numpy() for b in local])).all()


def test_clip_pretrains_on_pictures_and_captions_and_scores_its_image_tower(debug_cfg, tmp_path, ray_local,
                                                                               capsys):
    """`sslscale data prepare` of a captioned folder and of the tuxpaint_captions built-in (a subset, through
    --path, with the pretraining corpus's tokenizer), then CLIP on 2 workers: both towers under one DeepSpeed
    engine, records of two fields streamed by Ray Data, the image tower scored on the two-field target."""
    from captions import captioned_folder, stamps_subset
    from sslscale import pretrain
    from sslscale.data import corpus

    pics = tmp_path / "pics"
    corpus.prepare(str(captioned_folder(tmp_path / "folder", 64)), pics, image_size=16, seq_len=16, vocab_size=300,
                   progress=False)
    target = tmp_path / "target"
    corpus.prepare("tuxpaint_captions", target, path=str(stamps_subset(tmp_path / "stamps", 8)), tokenizer=str(pics),
                   image_size=16, test_fraction=0.25, progress=False)
    # model.init: the text tower starts from an exported text encoder of its shape, with the corpus's tokenizer;
    # named relative to the driver's folder (debug_cfg's tmp_path), which Ray's workers do not share
    import torch
    from safetensors.torch import load_file

    from sslscale.encoders.text import TextTransformer
    from sslscale.training.export import save_encoder

    torch.manual_seed(11)
    start = save_encoder(TextTransformer(vocab_size=300, max_length=16, dim=16, depth=1, heads=2),
                         str(tmp_path / "mlm.encoder.safetensors"), tokenizer=(pics / "tokenizer.json").read_bytes())
    result = pretrain(debug_cfg.override([
        "method.name=clip", f"data.corpus={pics}", "data.batch_size=16", "model.widths=8,16",
        "method.clip.text_dim=16", "method.clip.text_depth=1", "method.clip.text_heads=2", "method.clip.embed_dim=16",
        f"transfer.target={target}", "transfer.protocols=knn,linear", "model.init=mlm.encoder.safetensors"]))
    uri, run_id = result.tracking_uri, result.run_id
    run = tracking.get_run(uri, run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.workers"] == "2"
    assert [s for s, _ in tracking.history(uri, run_id, "loss")] == list(range(1, 7))
    assert 0 < run.data.metrics["contrastive_acc"] <= 1 and run.data.metrics["logit_scale"] > 1 / 0.07 * 0.9
    assert [s for s, _ in tracking.history(uri, run_id, "health/rankme")] == [2, 4, 6]  # the image tower's
    scores = {k.removeprefix("transfer/target/"): v for k, v in run.data.metrics.items()
              if k.startswith("transfer/target/")}
    assert {"knn_top1", "linear_top1", "random_init/knn_top1", "pixels/knn_top1", "majority"} <= set(scores)
    encoder = load_encoder(result.encoder_path)
    assert encoder.spec()["name"] == "resnet" and (encoder.in_channels, encoder.image_size) == (3, 16)
    # zero-shot on the target's categories and retrieval of its captions, against a random-init pair and chance
    zero = {"zeroshot_top1", "zeroshot_balanced", "random_init/zeroshot_top1", "chance/zeroshot_top1",
            "prompt_words", "prompt_words_split"}
    for way in ("image_to_text", "text_to_image"):
        zero |= {f"{prefix}retrieval/{way}_r{k}" for prefix in ("", "random_init/", "chance/") for k in (1, 5, 10)}
    assert zero <= set(scores) and scores["chance/zeroshot_top1"] == pytest.approx(1 / 3)
    assert scores["prompt_words"] == 3 and 0 <= scores["prompt_words_split"] <= 3
    assert all(0 <= scores[k] <= 1 for k in zero if "prompt" not in k)
    # the export holds both towers and the corpus's tokenizer: the model loads back whole
    from sslscale.training.export import load_model, load_tokenizer

    assert load_tokenizer(result.encoder_path).to_str().encode() == (pics / "tokenizer.json").read_bytes()
    datasets = {t.value: d.dataset.name for d in run.inputs.dataset_inputs for t in d.tags}
    assert datasets == {"training": "pics", "evaluation": "target"}  # the run page's Datasets
    model = load_model(result.encoder_path)
    assert model.text.spec()["kwargs"]["dim"] == 16 and model.logit_scale.item() != 0
    # 6 steps moved the text tower a little from where model.init started it, not to anywhere a seed would
    started, fresh = load_file(start), TextTransformer(vocab_size=300, max_length=16, dim=16, depth=1, heads=2)
    moved = [(model.text.state_dict()[k] - v).abs().mean() for k, v in started.items() if v.is_floating_point()]
    apart = [(fresh.state_dict()[k] - v).abs().mean() for k, v in started.items() if v.is_floating_point()]
    assert sum(moved) < 0.1 * sum(apart)
    # the run's logged model (MLflow's Models tab) loads through MLflow's API and gives what embed gives
    import numpy as np
    import pandas as pd

    from sslscale.evaluation.embed import Embedder

    [logged] = tracking.logged_models(uri, run_id)
    loaded = tracking.load_logged_model(uri, f"models:/{logged.model_id}")
    pictures = sorted(str(p) for p in (tmp_path / "folder").rglob("*.png"))[:5]
    direct = Embedder(result.encoder_path)
    np.testing.assert_array_equal(loaded.predict(pd.DataFrame({"path": pictures})),
                                  direct(np.stack([direct.prepare(p) for p in pictures])))
    # `sslscale evaluate` on the exported file scores zero-shot too (no baselines: the pretrained pair alone)
    from sslscale.cli import main

    assert main(["evaluate", "--checkpoint", result.encoder_path, "--target", str(target), "--no-baseline",
                 "--protocol", "knn", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "zeroshot_top1" in printed and "retrieval/text_to_image_r5" in printed and "random_init" not in printed


# what each method needs beyond the debug recipe: DINO's local crops, MAE's ViT (8x8 digits, 2x2 patches); BYOL
# with its paper's asymmetric views (each view its own blur and solarisation)
METHOD_OVERRIDES = {"byol": ["method.byol.view_blur=1.0,0.1", "method.byol.view_solarize=0,0.2"],
                    "dino": ["data.n_local=2", "data.local_size=4", "engine.zero_stage=3",  # EMA under ZeRO-3
                             "method.dino.freeze_last_layer=1", "optim.weight_decay_end=0.4"],
                    "mae": ["model.encoder=vit", "model.patch_size=2", "model.dim=16", "model.vit_depth=1",
                            "model.heads=2", "method.mae.decoder_dim=16", "method.mae.decoder_depth=1"]}


def _image_methods() -> list[str]:
    """The methods that read images alone (CLIP reads captions too: test_clip_e2e)."""
    from sslscale.config import Config
    from sslscale.methods import NAMES, kinds_read

    return sorted(n for n in NAMES if kinds_read(Config().override([f"method.name={n}"])) == ("image",))


def _each_trains_on_two_workers(debug_cfg, names: list[str]) -> None:
    from sslscale import pretrain

    debug_cfg.train.steps, debug_cfg.train.checkpoint_every, debug_cfg.transfer.enabled = 3, 3, False
    for name in names:
        cfg = debug_cfg.override([f"method.name={name}", *METHOD_OVERRIDES.get(name, [])])
        result = pretrain(cfg)
        losses = [v for _, v in tracking.history(result.tracking_uri, result.run_id, "loss")]
        assert len(losses) == 3 and all(map(math.isfinite, losses)), name
        assert tracking.get_run(result.tracking_uri, result.run_id).data.params["method.name"] == name


# the image methods make test trains end to end: between them every kind of input the stream makes (multi-crop;
# one view with visible patch ids) and the engine's ZeRO-3 with an EMA teacher; the others run in make test-long
# (each ~20 s), and their losses, views and teachers have unit tests of their own
QUICK_METHODS = ["dino", "mae"]


def test_dino_and_mae_train_on_two_workers(debug_cfg, ray_local):
    """Real steps: 2 Ray Train workers, DINO under ZeRO-3 (its teacher and its export gathered) on multi-crop
    views, MAE's ViT on one view and its visible patch ids, both made by Ray Data."""
    _each_trains_on_two_workers(debug_cfg, QUICK_METHODS)


@pytest.mark.long
def test_every_other_image_method_trains_on_two_workers(debug_cfg, ray_local):
    """Each other registered image method (SimCLR has its own tests, the text methods theirs) runs real steps: 2
    Ray Train workers, ZeRO-1, the method's own views from Ray Data."""
    _each_trains_on_two_workers(debug_cfg, [n for n in _image_methods() if n not in ["simclr", *QUICK_METHODS]])


TEXT = ["data.corpus=pydocs", "model.encoder=text", "model.dim=16", "model.vit_depth=1", "model.heads=2",
        "transfer.target=bbcnews"]


def test_masked_lm_pretrains_on_text_and_scores_on_bbc_news(debug_cfg, ray_local):
    """The masked LM end to end: Python's documentation prepared on first use (BPE tokenizer, passages), BERT's
    masking on the Ray Data tasks, a text transformer on 2 Ray Train workers under DeepSpeed ZeRO-1, masked-token
    accuracy, perplexity and the health metrics in MLflow, then kNN and a linear probe on BBC News (tokenised with
    the pretraining corpus's tokenizer) beside a random-init encoder and TF-IDF; the exported encoder reads ids and
    carries the corpus's tokenizer."""
    import torch

    from sslscale import pretrain

    cfg = debug_cfg.override(["method.name=mlm", *TEXT, "transfer.protocols=knn,linear", "train.steps=4",
                              "train.checkpoint_every=4"])
    result = pretrain(cfg)
    metrics = tracking.get_run(result.tracking_uri, result.run_id).data.metrics
    assert {"masked_acc", "perplexity", "health/rankme", "spectrum/eig_01"} <= set(metrics)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=0.05)  # the last step's, logged
    for name in ("knn_top1", "linear_top1", "random_init/knn_top1", "random_init/linear_top1", "tfidf/knn_top1",
                 "tfidf/linear_top1"):
        assert 0 <= result.scores[f"bbcnews/{name}"] <= 1, name
    assert result.scores["bbcnews/tfidf/linear_top1"] > 0.8  # BBC News's topics are easy for bag-of-words
    encoder = load_encoder(result.encoder_path)
    assert encoder.spec()["name"] == "text" and encoder(torch.randint(5, 100, (2, 16))).shape == (2, 16)
    from sslscale.data.corpus import resolve
    from sslscale.training.export import load_tokenizer

    with open(os.path.join(resolve("pydocs"), "tokenizer.json"), "rb") as f:  # the export reads text on its own
        assert load_tokenizer(result.encoder_path).to_str().encode() == f.read()


@pytest.mark.long
def test_next_token_sentence_order_and_simcse_pretrain_on_text(debug_cfg, ray_local):
    """GPT, SOP (with its masked LM) and SimCSE end to end as the masked LM is: their fields from the Ray Data tasks,
    2 Ray Train workers under ZeRO-1, their metrics in MLflow; GPT's encoder stays causal through export and
    transfer, where it is also fine-tuned on BBC News's token ids on 2 Ray Train workers, and trained from scratch."""
    from sslscale import pretrain

    trained = ["transfer.protocols=knn,finetune,scratch", "transfer.finetune_steps=4", "transfer.finetune_workers=2",
               "transfer.finetune_encoder_lr_scales=1", "transfer.scratch_lrs=1e-3", "transfer.finetune_batch_size=16"]
    results = {}
    for name, logged, protocols in (("gpt", {"token_acc", "perplexity"}, trained),
                                    ("sop", {"order_acc", "order_loss", "masked_acc"}, ["transfer.protocols=knn"]),
                                    ("simcse", {"pair_acc"}, ["transfer.protocols=knn"])):
        cfg = debug_cfg.override([f"method.name={name}", *TEXT, *protocols, "train.steps=3", "train.checkpoint_every=3"])
        result = results[name] = pretrain(cfg)
        metrics = tracking.get_run(result.tracking_uri, result.run_id).data.metrics
        assert logged | {"loss", "health/rankme"} <= set(metrics) and math.isfinite(metrics["loss"]), name
        assert 0 <= result.scores["bbcnews/knn_top1"] <= 1 and 0 <= result.scores["bbcnews/random_init/knn_top1"] <= 1
        assert load_encoder(result.encoder_path).causal == (name == "gpt"), name
    tuned = results["gpt"].scores
    assert 0 < tuned["bbcnews/finetune_top1"] <= 1 and 0 < tuned["bbcnews/scratch_top1"] <= 1
