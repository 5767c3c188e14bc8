"""A wav2vec 2.0 encoder (Baevski et al. 2020), small: PAD-padded int16 clips (N, T) -> features (N, dim).

The feature encoder is the paper's seven temporal convolutions (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2: a
400-sample receptive field every 320 samples, 25 ms every 20 ms at 16 kHz) with `conv_dim` channels (512 in the
paper; dim / 2 here), each followed by a LayerNorm over its channels and GELU (the paper's large models' variant:
the BASE model's GroupNorm normalises over time, so a clip's padding would change its features), then a LayerNorm:
`frames` returns these local features, which wav2vec 2.0 quantises. `embed.proj` maps them to the transformer's
width. The context network adds a convolutional relative position embedding (the paper's kernel 128 over 16 groups;
kernel 31 over `heads` groups here) and runs the ViT's pre-norm blocks (vit.Block) with padded frames never attended
to, then a LayerNorm: `context`. `forward` is the mean of the valid frames' context features (for transfer and the
health metrics). A frame is valid when its whole receptive field lies inside the clip
(modalities.audio.frame_count).

    >>> enc = Wav2Vec(sample_rate=16000, max_samples=16000, dim=32, depth=1, heads=2)
    >>> enc(torch.zeros(3, 16000, dtype=torch.int16)).shape  # (N, dim)
    torch.Size([3, 32])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslscale.data.modalities.audio import PAD
from sslscale.encoders.vit import Block
from sslscale.errors import SslscaleError

CONV = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2  # (kernel, stride) of the feature encoder's layers
HOP = 320  # samples between frames: the product of the strides
RECEPTIVE = 400  # samples a frame sees
POS_KERNEL = 31


class ConvLayer(nn.Module):
    """A temporal convolution, a LayerNorm over its channels at each step, GELU: (N, C, T) -> (N, width, T')."""

    def __init__(self, channels: int, width: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, width, kernel, stride, bias=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(x).transpose(1, 2)).transpose(1, 2))


class FeatureEncoder(nn.Module):
    """The convolutional feature encoder: float waves (N, T) -> LayerNormed local features (N, frames, width);
    `proj` maps them to the context network's width."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(*(ConvLayer(1 if i == 0 else width, width, kernel, stride)
                                    for i, (kernel, stride) in enumerate(CONV)))
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, dim)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(wave.unsqueeze(1)).transpose(1, 2))


class Wav2Vec(nn.Module):
    modality = "audio"  # the kind of data it takes (modalities.KINDS)

    @staticmethod
    def model_kwargs(model_cfg) -> dict:
        """Its constructor's own keyword arguments from the model.* keys it shares with the ViT and text encoders."""
        return {"dim": model_cfg.dim, "depth": model_cfg.vit_depth, "heads": model_cfg.heads}

    def __init__(self, *, sample_rate: int, max_samples: int, dim: int = 256, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, conv_dim: int | None = None):
        super().__init__()
        if heads <= 0 or dim % heads:
            raise SslscaleError(f"wav2vec encoder: model.dim={dim} must be a multiple of model.heads={heads}")
        if max_samples < RECEPTIVE:
            raise SslscaleError(f"wav2vec encoder: the corpus's clips hold at most {max_samples} samples, less than "
                                f"one frame ({RECEPTIVE}): prepare clips of at least {RECEPTIVE} samples")
        self.sample_rate, self.max_samples = sample_rate, max_samples
        self.dim, self.depth, self.heads, self.mlp_ratio = dim, depth, heads, mlp_ratio
        self.conv_dim = conv_dim or max(dim // 2, 1)
        self.feature_dim = dim
        self.embed = FeatureEncoder(self.conv_dim, dim)
        self.pos = nn.Sequential(nn.Conv1d(dim, dim, POS_KERNEL, padding=POS_KERNEL // 2, groups=heads), nn.GELU())
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    @property
    def input_size(self) -> int:
        """The most samples of a clip (the corpus's)."""
        return self.max_samples

    def spec(self) -> dict:
        kwargs = {"dim": self.dim, "depth": self.depth, "heads": self.heads, "mlp_ratio": self.mlp_ratio,
                  "conv_dim": self.conv_dim}
        return {"name": "wav2vec", "sample_rate": self.sample_rate, "max_samples": self.max_samples,
                "feature_dim": self.feature_dim, "kwargs": kwargs}

    def frames(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local features (N, F, conv_dim), valid (N, F) bool) of int16 clips (N, T) padded with PAD."""
        dtype = self.embed.proj.weight.dtype
        n = (wave != PAD).sum(dim=1)
        x = torch.where(wave == PAD, 0, wave).to(dtype) / 32768
        z = self.embed(x)
        frames = (n - RECEPTIVE) // HOP + 1  # modalities.audio.frame_count, in torch
        valid = torch.arange(z.shape[1], device=z.device)[None, :] < frames[:, None]
        return z, valid

    def context(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The context network's output (N, F, dim) for frames x (N, F, dim) (projected, masked or not)."""
        x = x * valid[..., None].to(x.dtype)
        x = x + self.pos(x.transpose(1, 2)).transpose(1, 2)
        frames = x.shape[1]
        mask = valid[:, None, None, :] | torch.eye(frames, dtype=torch.bool, device=x.device)  # (N, 1, F, F)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    @staticmethod
    def pool(c: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The mean of the valid frames' features: (N, F, D), (N, F) -> (N, D)."""
        weight = valid[..., None].float()  # counts summed in fp32, where bf16 would round them
        return ((c.float() * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1)).to(c.dtype)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        z, valid = self.frames(wave)
        return self.pool(self.context(self.embed.proj(z), valid), valid)  # (N, dim)
