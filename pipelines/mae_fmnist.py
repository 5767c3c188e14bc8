"""MAE (He et al. 2022) on Fashion-MNIST with a small ViT, sized for the same few CPU minutes as the other recipes.

Paper: ViT-B/L/H with 16x16 patches on 224 px (196 patches), mask ratio 0.75, decoder 512 wide with 8 blocks,
normalised-pixel loss, AdamW (base lr 1.5e-4 x batch/256, betas 0.9/0.95, weight decay 0.05), batch 4096, 40
warmup epochs of 800-1600, random resized crop (0.2-1) and flip only. Scaled here: a ViT with 4x4 patches on the
28 px images (49 patches, 12 visible), 128 wide, 4 blocks, 4 heads; decoder 64 wide with 2 blocks; the same mask
ratio, loss, augmentations, betas and weight decay; lr 1.5e-3 at batch 256 (a short run needs a larger rate).
"""
from pipelines import simclr_fmnist
from sslscale.config import Config


def config() -> Config:
    cfg = simclr_fmnist.config()
    cfg.method.name = "mae"
    cfg.model.encoder, cfg.model.patch_size, cfg.model.dim, cfg.model.vit_depth, cfg.model.heads = "vit", 4, 128, 4, 4
    mae = cfg.method.section("mae")
    mae.mask_ratio, mae.decoder_dim, mae.decoder_depth = 0.75, 64, 2
    cfg.data.crop_min_scale, cfg.data.jitter_prob = 0.2, 0.0
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.beta2 = 1.5e-3, 0.05, 0.95
    return cfg
