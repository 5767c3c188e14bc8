"""BYOL (Grill et al. 2020) on Fashion-MNIST, sized like simclr_fmnist (~6 minutes on 2 CPU
cores) plus the teacher's forward pass.

Paper: ResNet-50, projector and predictor 4096-256, target momentum 0.996 -> 1 (cosine), LARS (lr 0.2 x batch/256,
weight decay 1.5e-6), batch 4096, 1000 epochs (~300k steps), asymmetric blur and solarisation. Scaled here: the small
ResNet of simclr_fmnist, heads 512-128, AdamW at simclr_fmnist's lr, batch 256 and augmentations, so the recipes
compare directly; base momentum 0.99, because with 0.996 the target would average over ~250 steps, most of this
320-step run.
"""
from pipelines import simclr_fmnist
from sslscale.config import Config


def config() -> Config:
    cfg = simclr_fmnist.config()
    cfg.method.name = "byol"
    byol = cfg.method.section("byol")
    byol.proj_hidden, byol.proj_dim = 512, 128
    byol.momentum, byol.momentum_final = 0.99, 1.0
    return cfg
