"""Next-token prediction (GPT, Radford et al. 2018 and 2019) on Python's documentation (the built-in `pydocs`
corpus, passages of up to 128 tokens), scored on BBC News (kNN and a linear probe on mean-pooled features, next to a
random-init encoder of the same shape and TF-IDF).

Paper: GPT-1 (12 causal blocks, 768 wide, 12 heads), BPE 40k, 512-token sequences, batch 64, 100 epochs of
BooksCorpus, Adam (lr 2.5e-4, 2k warmup steps, cosine), weight decay 0.01. Scaled here as mlm_text is, so the two
compare on equal terms: 4 causal blocks, 128 wide, 4 heads, a byte-level BPE of 8,192 ids, batch 64, AdamW at
lr 1e-3, weight decay 0.01, 1000 steps (every non-padding token after the first is a prediction, ~6x the masked
LM's 15%).
"""
from sslscale.config import Config


def config() -> Config:
    cfg = Config()
    cfg.method.name = "gpt"
    cfg.data.corpus, cfg.data.batch_size = "pydocs", 64
    cfg.model.encoder, cfg.model.dim, cfg.model.vit_depth, cfg.model.heads = "text", 128, 4, 4
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps = 1e-3, 0.01, 50
    cfg.engine.zero_stage = 1
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.health_every = 1000, 250, 50
    cfg.transfer.target, cfg.transfer.protocols = "bbcnews", "knn,linear"
    return cfg
