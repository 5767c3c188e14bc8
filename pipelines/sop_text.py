"""Sentence-order prediction with BERT's masked LM beside it (ALBERT, Lan et al. 2020) on Python's documentation
(the built-in `pydocs` corpus, passages of up to 128 tokens), scored on BBC News (kNN and a linear probe on
mean-pooled features, next to a random-init encoder of the same shape and TF-IDF).

Paper: ALBERT-base (12 blocks sharing their weights, 768 wide, 128-wide factorised embeddings), SentencePiece 30k,
512-token sequences of two segments, batch 4096, 125k steps of LAMB at lr 0.00176, 15% masked (n-gram masking),
SOP on [CLS]. Scaled here as mlm_text is, so the text recipes compare on equal terms: 4 blocks, 128 wide, 4 heads,
a byte-level BPE of 8,192 ids, batch 64, AdamW at lr 1e-3, weight decay 0.01, 1000 steps; SOP on the mean-pooled
output (the one transfer reads), 15% of single BPE tokens masked (no n-gram masking).
"""
from pipelines import mlm_text
from sslscale.config import Config


def config() -> Config:
    cfg = mlm_text.config()  # the same corpus, encoder, optimizer, steps and transfer, so the text methods compare
    cfg.method.name = "sop"
    cfg.method.section("sop").mask_ratio = 0.15
    return cfg
