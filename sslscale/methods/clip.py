"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").

An image tower (the run's model.encoder) and a text tower (a transformer of the text family, method.clip.text_*),
each with a linear projection into one embedding space. A picture and its caption are a positive pair; every other
caption and picture of the global batch is a negative. The loss is CLIP's symmetric InfoNCE with a learnable
temperature: logits = exp(t) x cosine similarities, t initialised to log(1 / 0.07) and the scale clamped at 100,
cross-entropy from pictures to captions and from captions to pictures, averaged.

Across workers it follows OpenCLIP (`gather_with_grad`, `local_loss`): every worker gathers the normalised
features of all workers with gradients (dist.gather_with_grad) and scores its local rows against all columns, so
the mean of the workers' losses, and their averaged gradients, are the single-process loss and gradients on the
concatenated batch. Both towers, the projections and the temperature sit in one module: one DeepSpeed engine.
Views: a random resized crop and flip of the picture (the recipe turns the colour augmentations off), the caption as
it is. `encoder` is the image tower: the one probed, monitored and exported as the encoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale import dist
from sslscale.data.modalities.image import ImageLayout
from sslscale.data.modalities.text import TextLayout
from sslscale.methods.base import Method, Section


@dataclass
class CLIPSection(Section):
    """method.clip.* (paper: embedding 512-1024, a 12-layer 512-wide text transformer, T 0.07 learnable)."""

    embed_dim: int = 128  # width of the shared embedding space (both projections)
    init_temperature: float = 0.07  # the softmax temperature at step 0 (learnt as log(1 / T))
    max_logit_scale: float = 100.0  # 1 / T is clamped at this, as in CLIP
    text_dim: int = 128  # the text tower's token width
    text_depth: int = 2  # its transformer blocks
    text_heads: int = 4  # its attention heads; must divide text_dim

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [("embed_dim", self.embed_dim > 0, "a positive width"),
                ("init_temperature", 0 < self.init_temperature <= 1, "in (0, 1]"),
                ("max_logit_scale", self.max_logit_scale >= 1 / self.init_temperature,
                 "at least 1 / method.clip.init_temperature"),
                ("text_depth", self.text_depth > 0, "a positive number of blocks"),
                ("text_heads", self.text_heads > 0 and self.text_dim % self.text_heads == 0,
                 "a positive divisor of method.clip.text_dim")]


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over the global batch, for this worker's rows.

    image, text: (n, d) L2-normalised features of this worker's n pairs (row i of both: one pair); scale: the
    logit scale exp(t). Returns (loss, accuracy): loss = (CE(pictures -> captions) + CE(captions -> pictures)) / 2
    over this worker's rows against the N = n x world columns; accuracy: how often a picture's top caption and a
    caption's top picture are its own. Averaging `loss` over workers gives the single-process loss.
    """
    n = image.shape[0]
    all_image, all_text = dist.gather_with_grad(image), dist.gather_with_grad(text)  # (N, d) each
    own = torch.arange(n, device=image.device) + dist.rank() * n  # the global column of each local pair
    per_image = scale * image @ all_text.T  # (n, N)
    per_text = scale * text @ all_image.T  # (n, N)
    loss = (F.cross_entropy(per_image, own) + F.cross_entropy(per_text, own)) / 2
    acc = ((per_image.argmax(1) == own).float().mean() + (per_text.argmax(1) == own).float().mean()) / 2
    return loss, acc


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least (bf16 features and logits are scored in float32; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class CLIP(Method):
    section = CLIPSection

    @classmethod
    def towers(cls, section) -> dict[str, tuple[str, dict]]:
        return {"text": ("text", {"dim": section.text_dim, "depth": section.text_depth, "heads": section.text_heads})}

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict:
        return {"image": ImageLayout(n_views=1), "text": TextLayout()}

    def __init__(self, encoder: nn.Module, cfg, towers: dict[str, nn.Module]):
        super().__init__(encoder, cfg)
        self.text = towers["text"]
        self.image_proj = nn.Linear(encoder.feature_dim, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text.feature_dim, cfg.embed_dim, bias=False)
        # shape (1,), not a 0-d scalar as CLIP's: DeepSpeed's broadcast of the initial weights views each as bytes
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / cfg.init_temperature)))

    def tower_modules(self) -> dict[str, nn.Module]:
        return {"text": self.text}

    def sizes(self) -> dict[str, int]:
        return {"image": self.encoder.input_size, "text": self.text.input_size}

    def embed_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image tower features (n, D), their L2-normalised projections (n, embed_dim))."""
        h = self.encoder(images)
        return h, F.normalize(_wide(self.image_proj(h)), dim=1)

    def embed_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised projections (n, embed_dim) of captions' token ids (n, L)."""
        return F.normalize(_wide(self.text_proj(self.text(tokens))), dim=1)

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        h, image = self.embed_images(batch["view_0"])
        text = self.embed_texts(batch["tokens"])
        scale = _wide(self.logit_scale[0]).exp().clamp(max=self.cfg.max_logit_scale)
        loss, acc = clip_loss(image, text, scale)
        return {"loss": loss, "contrastive_acc": acc.detach(), "logit_scale": scale.detach(),
                "embeddings": h.detach()}
