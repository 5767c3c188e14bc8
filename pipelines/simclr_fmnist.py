"""SimCLR on Fashion-MNIST (60k train images, 28x28 grayscale), sized so that `make demo` fits 12 minutes on a
fresh clone of a 2-core machine on a slow day: 600 steps of 256, ~7 minutes at ~370 samples/s.

2 Ray Train workers, DeepSpeed ZeRO-1, fp32 on CPU (bf16 on GPU), AdamW with warmup + cosine. Scored by kNN and
a linear probe on the Fashion-MNIST test split, next to a random-init encoder and raw pixels.
"""
from sslscale.config import Config


def config() -> Config:
    cfg = Config()
    cfg.data.corpus = "fmnist"
    cfg.data.batch_size = 256
    cfg.data.crop_min_scale = 0.3
    cfg.data.grayscale = 0.0
    cfg.model.widths, cfg.model.depths = (16, 32, 64), (1, 1, 1)  # ~5 ms/sample of CPU: fits the demo budget
    cfg.method.section("simclr").temperature = 0.2
    cfg.optim.lr, cfg.optim.warmup_steps = 2e-3, 20
    cfg.engine.zero_stage = 1
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.health_every = 600, 200, 50
    cfg.transfer.target = "fmnist"
    return cfg
