"""Next-token prediction (GPT, Radford et al. 2018 and 2019) on Python's documentation (the built-in `pydocs`
corpus, passages of up to 128 tokens), scored on BBC News (kNN and a linear probe on mean-pooled features, next to a
random-init encoder of the same shape and TF-IDF).

Paper: GPT-1 (12 causal blocks, 768 wide, 12 heads), BPE 40k, 512-token sequences, batch 64, 100 epochs of
BooksCorpus, Adam (lr 2.5e-4, 2k warmup steps, cosine), weight decay 0.01. Scaled here as mlm_text is, so the two
compare on equal terms: 4 causal blocks, 128 wide, 4 heads, a byte-level BPE of 8,192 ids, batch 64, AdamW at
lr 1e-3, weight decay 0.01, 1000 steps (every non-padding token after the first is a prediction, ~6x the masked
LM's 15%).
"""
from pipelines import mlm_text
from sslscale.config import Config


def config() -> Config:
    cfg = mlm_text.config()  # the same corpus, encoder, optimizer, steps and transfer, so the text methods compare
    cfg.method.name = "gpt"
    return cfg
