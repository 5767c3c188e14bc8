"""Masked language modelling (BERT, Devlin et al. 2019) on Python's documentation (the built-in `pydocs` corpus,
~0.9 M tokens in 8,280 passages of up to 128 tokens), scored on BBC News (kNN and a linear probe on mean-pooled
features, next to a random-init encoder of the same shape and TF-IDF).

Paper: BERT-base (12 blocks, 768 wide, 12 heads), WordPiece 30k, sequences of 128 then 512 tokens, batch 256,
1M steps, Adam (lr 1e-4, weight decay 0.01, 10k warmup steps), 15% of tokens predicted (80/10/10). Scaled here to
2 CPU cores and ~10 minutes: 4 blocks, 128 wide, 4 heads (BERT-mini's shape), a byte-level BPE of 8,192 ids, the
same 128-token passages and masking, AdamW at lr 1e-3 (a short run takes a larger rate), weight decay 0.01.
"""
from sslscale.config import Config


def config() -> Config:
    cfg = Config()
    cfg.method.name = "mlm"
    cfg.method.section("mlm").mask_ratio = 0.15
    cfg.data.corpus, cfg.data.batch_size = "pydocs", 64
    cfg.model.encoder, cfg.model.dim, cfg.model.vit_depth, cfg.model.heads = "text", 128, 4, 4
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps = 1e-3, 0.01, 50
    cfg.engine.zero_stage = 1
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.health_every = 1000, 250, 50
    cfg.transfer.target, cfg.transfer.protocols = "bbcnews", "knn,linear"
    return cfg
