"""Masked language modelling on openclipart's captions (the text field of the built-in image-text corpus: 6,885
titles with their topic folders, openclipart's 4,096-id BPE, up to 32 tokens): a text encoder of exactly the shape
of clip_openclipart's text tower (2 blocks, 128 wide, 4 heads), so that `model.init` can start CLIP's text tower from
it. Scored with kNN and a linear probe on tuxpaint_captions' captions (16 categories), beside a random-init encoder
and TF-IDF.

    sslscale pretrain --recipe mlm_openclipart                                     # ~5 min
    sslscale pretrain --recipe clip_openclipart model.init=runs/<that run>/encoder.safetensors

BERT's masking (15% of tokens, 80/10/10), AdamW at lr 1e-3, 600 steps of 128 captions (11 epochs).
"""
from pipelines import mlm_text
from sslscale.config import Config


def config() -> Config:
    cfg = mlm_text.config()  # BERT's masking, AdamW at 1e-3, the text family 128 wide with 4 heads
    cfg.data.corpus, cfg.data.batch_size = "openclipart", 128
    cfg.model.vit_depth = 2  # clip_openclipart's text tower: method.clip.text_depth
    cfg.optim.warmup_steps = 30
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.probe_samples = 600, 200, 256
    cfg.transfer.target = "tuxpaint_captions"
    return cfg
