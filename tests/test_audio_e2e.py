"""wav2vec 2.0 end to end on a small subset of the real spoken-names corpus: prepared through `sslscale data
prepare tuxpaint_speech --path`, crops and masks made on Ray Data's tasks, 2 Ray Train workers under DeepSpeed
ZeRO-1, the metrics in MLflow, then spoken-language identification on the held-out pictures (kNN, the linear probe
and fine-tuning on 2 workers, all labels and half of them) beside a random-init encoder and log-mel statistics;
the exported encoder reads int16 clips. A run of about a minute: `make test-long`."""
import math

import numpy as np
import pytest
import torch

from speech import speech_subset
from sslscale.cli import main
from sslscale.runtime import tracking
from sslscale.training.export import load_encoder

pytestmark = [pytest.mark.slow, pytest.mark.long]

AUDIO = ["method.name=wav2vec2", "model.encoder=wav2vec", "model.dim=16", "model.vit_depth=1", "model.heads=2",
         "method.wav2vec2.crop=8000", "method.wav2vec2.num_negatives=4", "data.batch_size=8", "train.probe_samples=16"]


def test_wav2vec2_pretrains_on_real_speech_and_identifies_languages(debug_cfg, ray_local, tmp_path):
    from sslscale import pretrain

    corpus = tmp_path / "speech"
    assert main(["data", "prepare", "tuxpaint_speech", "--path", str(speech_subset(tmp_path / "stamps")),
                 "--out", str(corpus)]) == 0
    cfg = debug_cfg.override([*AUDIO, f"data.corpus={corpus}", f"transfer.target={corpus}", "train.steps=4",
                              "train.checkpoint_every=4", "transfer.protocols=knn,linear,finetune",
                              "transfer.label_fractions=0.5,1.0", "transfer.finetune_steps=4",
                              "transfer.finetune_workers=2", "transfer.finetune_encoder_lr_scales=1",
                              "transfer.finetune_batch_size=8", "transfer.embedding_map=pca"])
    result = pretrain(cfg)
    run = tracking.get_run(result.tracking_uri, result.run_id)
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.params["train.workers"] == "2"
    assert {"contrastive", "diversity", "masked_acc", "prob_perplexity", "code_perplexity", "gumbel_tau",
            "health/rankme", "spectrum/eig_01"} <= set(metrics)
    assert math.isfinite(metrics["loss"]) and 1 <= metrics["code_perplexity"] <= 2 * 16
    scores = {k.removeprefix("speech/"): v for k, v in result.scores.items()}
    for name in ("knn_top1", "linear_top1", "finetune_top1", "linear_top1/frac0.5", "random_init/knn_top1",
                 "logmel/knn_top1", "logmel/linear_top1", "linear_balanced", "majority"):
        assert 0 <= scores[name] <= 1, name
    assert scores["logmel/linear_top1"] > 1 / 3  # three languages: each read by its own speaker
    encoder = load_encoder(result.encoder_path)
    assert encoder.spec()["name"] == "wav2vec" and encoder.sample_rate == 16000
    clip = torch.as_tensor(np.random.default_rng(0).integers(-3000, 3000, (2, 8000)), dtype=torch.int16)
    assert encoder.eval()(clip).shape == (2, 16)
