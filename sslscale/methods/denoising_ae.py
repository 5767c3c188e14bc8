"""Denoising autoencoder (Vincent et al. 2008, "Extracting and Composing Robust Features with Denoising
Autoencoders"), convolutional: the encoder sees a corrupted view x~ ~ q(x~ | x) and a decoder g reconstructs the
clean view x from its features:

    loss = 1/(N C H W) sum ||g(f(x~)) - x||^2,   x~ = clamp(x + eps, 0, 1),  eps ~ N(0, cfg.noise_std^2)

The 2008 paper corrupts by masking (a random fraction of the pixels set to 0), trains fully connected sigmoid layers
with a cross-entropy reconstruction loss and stacks them greedily; additive isotropic Gaussian noise with a squared
error is the variant of Vincent et al. 2010 ("Stacked Denoising Autoencoders"), used here with std 0.3 in [0, 1]
pixel units, on any sslscale encoder, trained end to end. The decoder is small: Linear to 128 x s x s (s =
ceil(S / 4)), two stride-2 transposed convolutions (64, 32 channels), a 3x3 conv to C channels, cropped to S x S.

The noise is drawn on the trainer from a CPU generator seeded by (step, rank, micro-batch index), never from the
global RNG: views are deterministic functions of (seed, epoch, id) elsewhere, and a run resumed from a checkpoint
(whose step forward receives again) must corrupt exactly as the uninterrupted run did.
`embeddings` are the encoder's features of the noisy input, the ones the loss trains, from the same pass (no
second clean pass; with noise_std=0 they are the clean features). The loss is a mean of per-image terms: with
equal per-worker batches DeepSpeed's gradient average equals the single-process gradient, no gather needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sslscale import dist
from sslscale.data.modalities.image import ImageLayout
from sslscale.methods.base import Method, Section, drop_legacy_step_buffer


@dataclass
class DenoisingAESection(Section):
    """method.denoising_ae.*: the corruption (Vincent et al. 2010: Gaussian noise of std 0.3 to 0.5 in [0, 1])."""

    noise_std: float = 0.3  # std of the Gaussian noise added to the input, in [0, 1] pixel units

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [("noise_std", self.noise_std >= 0, "0 or more")]


def denoising_loss(recon: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element of recon and clean (N, C, H, W), in float32."""
    return (recon.float() - clean.float()).pow(2).mean()


def corrupt(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """x (N, C, H, W) in [0, 1] plus Gaussian noise of std `std` drawn on the CPU from `seed`, clamped to [0, 1];
    same device and dtype as x. The same (x, std, seed) always gives the same output, whatever the device."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * std
    return (x.float() + noise.to(x.device)).clamp_(0, 1).to(x.dtype)


class ConvDecoder(nn.Module):
    """Features (N, D) -> images (N, C, S, S) in (0, 1)."""

    def __init__(self, dim: int, channels: int, image_size: int):
        super().__init__()
        self.image_size, s = image_size, -(-image_size // 4)  # 4s >= S; the extra rows are cropped
        self.net = nn.Sequential(  # widths fixed small (128, 64, 32): the decoder is discarded after pretraining
            nn.Linear(dim, 128 * s * s), nn.Unflatten(1, (128, s, s)), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),  # 2s
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),  # 4s
            nn.Conv2d(32, channels, 3, padding=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.net(h)  # (N, C, 4s, 4s)
        lo, size = (y.shape[-1] - self.image_size) // 2, self.image_size
        return torch.sigmoid(y[..., lo:lo + size, lo:lo + size])  # (N, C, S, S)


class DenoisingAE(Method):
    section = DenoisingAESection

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        self.decoder = ConvDecoder(encoder.feature_dim, encoder.in_channels, encoder.image_size)
        self.micro, self.micro_step = 0, -1  # forward passes within step micro_step (grad_accum micro-batches differ)
        self._register_load_state_dict_pre_hook(drop_legacy_step_buffer)

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, ImageLayout]:
        return {"image": ImageLayout(n_views=1)}  # the corruption is made on the trainer

    def noise_seed(self, step: int) -> int:
        """Seed of a forward's noise: a function of (step, rank, micro-batch within the step) only (int hashes are
        stable)."""
        if step != self.micro_step:
            self.micro, self.micro_step = 0, step
        return hash((step, dist.rank(), self.micro)) & (2**63 - 1)

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        clean = batch["view_0"]  # (N, C, S, S)
        noisy = corrupt(clean, self.cfg.noise_std, self.noise_seed(step))
        self.micro += 1
        h = self.encoder(noisy)  # (N, D)
        loss = denoising_loss(self.decoder(h), clean)
        return {"loss": loss, "embeddings": h.detach()}

