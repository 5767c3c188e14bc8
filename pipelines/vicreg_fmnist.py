"""VICReg (Bardes et al. 2022) on Fashion-MNIST, sized like simclr_fmnist (~6 minutes on 2 CPU cores).

Paper: ResNet-50, expander 8192-8192-8192, coefficients 25 / 25 / 1 (invariance / variance / covariance), LARS
(base lr 0.2 x batch / 256, weight decay 1e-6), batch 2048, 1000 epochs, BYOL augmentations. Scaled here: the small
ResNet of simclr_fmnist (64 features), a 512-512-512 expander (8192 would dominate the CPU step), the paper's
coefficients, AdamW at simclr_fmnist's lr, batch 256 and augmentations, so the two recipes compare directly.
"""
from pipelines import simclr_fmnist
from sslscale.config import Config


def config() -> Config:
    cfg = simclr_fmnist.config()
    cfg.method.name = "vicreg"
    vicreg = cfg.method.section("vicreg")
    vicreg.proj_hidden, vicreg.proj_dim = 512, 512
    vicreg.sim_coeff, vicreg.std_coeff, vicreg.cov_coeff = 25.0, 25.0, 1.0
    return cfg
