"""Denoising autoencoder (Vincent et al. 2008 / 2010) on Fashion-MNIST, sized like simclr_fmnist.

Paper: stacked fully connected layers on 28x28 MNIST-like digits, masking or Gaussian noise (std up to 0.5), layer by
layer, then fine-tuning. Scaled here: the small ResNet of simclr_fmnist trained end to end with the small conv
decoder of methods/denoising_ae.py, Gaussian noise std 0.3, a mild crop (area 0.5-1) and no colour jitter, AdamW at
simclr_fmnist's lr.
"""
from pipelines import simclr_fmnist
from sslscale.config import Config


def config() -> Config:
    cfg = simclr_fmnist.config()
    cfg.method.name = "denoising_ae"
    cfg.method.section("denoising_ae").noise_std = 0.3
    cfg.data.crop_min_scale, cfg.data.jitter_prob = 0.5, 0.0
    return cfg
