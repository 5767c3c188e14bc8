"""Unsupervised SimCSE (Gao et al. 2021: dropout as the augmentation, a contrastive loss on sentence embeddings) on
Python's documentation (the built-in `pydocs` corpus, passages of up to 128 tokens), scored on BBC News (kNN and a
linear probe on mean-pooled features, next to a random-init encoder of the same shape and TF-IDF).

Paper: starts from pretrained BERT-base, 1M Wikipedia sentences, batch 64, lr 3e-5, T 0.05, dropout 0.1, one epoch.
Here from random initialisation, scaled as mlm_text is, so the text recipes compare on equal terms: 4 blocks, 128
wide, 4 heads, batch 64 passages, AdamW at lr 1e-3, weight decay 0.01, 1000 steps; T 0.05, dropout 0.1.
Measured: from random initialisation the task is solved at the first logged step (pair accuracy 1.0, loss 0.003),
so this recipe learns nothing until it can start from a pretrained encoder (docs/text.md).
"""
from pipelines import mlm_text
from sslscale.config import Config


def config() -> Config:
    cfg = mlm_text.config()  # the same corpus, encoder, optimizer, steps and transfer, so the text methods compare
    cfg.method.name = "simcse"
    cfg.method.section("simcse").temperature = 0.05
    return cfg
