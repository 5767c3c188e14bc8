"""Barlow Twins (Zbontar et al. 2021) on Fashion-MNIST, sized like simclr_fmnist (~6 minutes on 2 CPU cores).

Paper: ResNet-50, projector 8192-8192-8192, lambda 0.0051, LARS (lr 0.2 weights / 0.0048 biases, weight decay
1.5e-6), batch 2048, 1000 epochs, BYOL augmentations (asymmetric blur and solarisation). Scaled here: the small
ResNet of simclr_fmnist (64 features), a 512-512-512 projector (the paper's accuracy still rises with width up to
16384, but 8192 would dominate the CPU step), lambda kept at 0.0051 (the paper finds the loss insensitive to it over
a wide range), AdamW at simclr_fmnist's lr, batch 256 and augmentations, so the two recipes compare directly.
"""
from pipelines import simclr_fmnist
from sslscale.config import Config


def config() -> Config:
    cfg = simclr_fmnist.config()
    cfg.method.name = "barlow_twins"
    barlow = cfg.method.section("barlow_twins")
    barlow.proj_hidden, barlow.proj_dim = 512, 512
    barlow.lambd = 0.0051
    return cfg
