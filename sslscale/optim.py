"""Optimizers in plain torch: AdamW from torch, and LARS (You et al. 2017) as SimCLR uses it.

Biases and normalisation weights (1-d parameters) get no weight decay and, for LARS, no trust-ratio scaling.
"""
from __future__ import annotations

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-layer step is scaled by trust * ||w|| / ||g + wd * w||.

    Param groups with `lars=False` (biases, norms) take a plain momentum-SGD step."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm, g_norm = p.norm(), g.norm()
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), group["trust"] * w_norm / g_norm, 1.0)
                    g = g * ratio
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0, "lars": False}]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """cfg: the optim config section (name, lr, weight_decay, momentum)."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)
    for g in groups:
        g.pop("lars", None)
    return torch.optim.AdamW(groups, lr=cfg.lr)
