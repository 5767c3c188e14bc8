"""CLIP (Radford et al. 2021) on clip art and its titles: the built-in `openclipart` corpus (Debian openclipart-png,
6,885 distinct public-domain pictures at 64 px, each captioned with its title and topic folders), scored zero-shot
and with kNN and a linear probe on `tuxpaint_captions` (Tux Paint's stamps with their human-written names, 16
categories), next to a random-init pair of towers and raw pixels.

Paper: a ViT-L/14 or ResNet-50x64 image tower and a 12-layer 512-wide text transformer, 400 million pairs, batches of
32,768, 32 epochs. Scaled here to 2 CPU cores and ~12 minutes (~55 pairs/s at 64 px): the default small ResNet
(32-64-128) and a 2-block 128-wide text tower, embeddings of 128, 300 batches of 128 pairs (5.6 epochs), AdamW at
lr 1e-3 with the learnt temperature starting at 0.07. The picture's views are a random resized crop (area 0.5-1) and
a flip, no colour changes: a caption may name the colour.
"""
from sslscale.config import Config


def config() -> Config:
    cfg = Config()
    cfg.method.name = "clip"
    cfg.data.corpus, cfg.data.batch_size = "openclipart", 128
    cfg.data.crop_min_scale, cfg.data.jitter_prob, cfg.data.grayscale = 0.5, 0.0, 0.0
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps = 1e-3, 0.1, 30
    cfg.engine.zero_stage = 1
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.health_every = 300, 100, 50
    cfg.train.probe_samples = 256
    cfg.transfer.target, cfg.transfer.protocols = "tuxpaint_captions", "knn,linear"
    return cfg
