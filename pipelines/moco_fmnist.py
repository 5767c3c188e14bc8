"""MoCo v3 (Chen, Xie and He 2021) on Fashion-MNIST, sized like simclr_fmnist (~6 minutes on 2 CPU
cores) plus the teacher's forward pass.

Paper (ResNet-50): projector 4096-256 ending in BatchNorm, predictor 4096-256, key momentum 0.99 -> 1 (cosine),
T = 1.0 (0.2 for ViT), LARS (lr 0.6 x batch/256, weight decay 1e-6), batch 4096, 100-1000 epochs. Scaled here: the
small ResNet of simclr_fmnist, heads 512-128, T = 0.2 as simclr_fmnist, AdamW at its lr, batch 256 and
augmentations, so the contrastive recipes compare directly.
"""
from pipelines import simclr_fmnist
from sslscale.config import Config


def config() -> Config:
    cfg = simclr_fmnist.config()
    cfg.method.name = "moco_v3"
    moco = cfg.method.section("moco_v3")
    moco.proj_hidden, moco.proj_dim = 512, 128
    moco.temperature = 0.2
    moco.momentum, moco.momentum_final = 0.99, 1.0
    return cfg
