"""Sentence-order prediction with BERT's masked LM beside it (ALBERT, Lan et al. 2020) on Python's documentation
(the built-in `pydocs` corpus, passages of up to 128 tokens), scored on BBC News (kNN and a linear probe on
mean-pooled features, next to a random-init encoder of the same shape and TF-IDF).

Paper: ALBERT-base (12 blocks sharing their weights, 768 wide, 128-wide factorised embeddings), SentencePiece 30k,
512-token sequences of two segments, batch 4096, 125k steps of LAMB at lr 0.00176, 15% masked (n-gram masking),
SOP on [CLS]. Scaled here as mlm_text is, so the text recipes compare on equal terms: 4 blocks, 128 wide, 4 heads,
a byte-level BPE of 8,192 ids, batch 64, AdamW at lr 1e-3, weight decay 0.01, 1000 steps; SOP on the mean-pooled
output (the one transfer reads), whole-token masking of 15%.
"""
from sslscale.config import Config


def config() -> Config:
    cfg = Config()
    cfg.method.name = "sop"
    cfg.method.sop.mask_ratio = 0.15
    cfg.data.corpus, cfg.data.batch_size = "pydocs", 64
    cfg.model.encoder, cfg.model.dim, cfg.model.vit_depth, cfg.model.heads = "text", 128, 4, 4
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps = 1e-3, 0.01, 50
    cfg.engine.zero_stage = 1
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.health_every = 1000, 250, 50
    cfg.transfer.target, cfg.transfer.protocols = "bbcnews", "knn,linear"
    return cfg
