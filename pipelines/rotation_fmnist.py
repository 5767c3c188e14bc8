"""Rotation prediction (Gidaris et al. 2018) on Fashion-MNIST, sized like simclr_fmnist.

Paper: NIN / AlexNet on CIFAR-10 and ImageNet, every image in all 4 rotations in the batch, SGD (lr 0.1, momentum
0.9, weight decay 5e-4) for ~100 epochs, light augmentation. Scaled here: the small ResNet of simclr_fmnist with an
MLP classifier (512 hidden), a mild crop (area 0.5-1) and no colour jitter (the rotation, not the photometry, is the
task), AdamW at simclr_fmnist's lr; each step sees 256 images x 4 rotations.
"""
from pipelines import simclr_fmnist
from sslscale.config import Config


def config() -> Config:
    cfg = simclr_fmnist.config()
    cfg.method.name = "rotation"
    cfg.method.section("rotation").proj_hidden = 512
    cfg.data.crop_min_scale, cfg.data.jitter_prob = 0.5, 0.0
    return cfg
