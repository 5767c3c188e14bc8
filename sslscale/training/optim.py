"""Optimizers in plain torch: AdamW from torch, and LARS (You et al. 2017) as SimCLR uses it.

Biases and normalisation weights (1-d parameters) get no weight decay and, for LARS, no trust-ratio scaling.
Every optimizer is guarded (`guard_nonfinite`): a step whose gradients hold inf/NaN on any rank is skipped on
every rank, so neither the weights nor the optimizer state see it.
"""
from __future__ import annotations

import types

import torch
import torch.distributed as dist
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


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """Trainable weights (decay=True: their weight decay follows the schedule) and the 1-d rest (never decayed).
    A model may say, per parameter name, `lr_scale(name)` (finetune.Classifier: its rate as a multiple of the
    schedule's) and `frozen_steps(name)` (DINO's prototypes: steps at the start with rate 0); it then gets one
    such pair per (scale, frozen steps), with those keys on the groups (set_learning_rates reads them)."""
    scale = getattr(model, "lr_scale", lambda name: 1.0)
    frozen = getattr(model, "frozen_steps", lambda name: 0)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    keys = {n: (scale(n), frozen(n)) for n, _ in named}
    if set(keys.values()) <= {(1.0, 0)}:
        return _pair([p for _, p in named], weight_decay)
    groups = []
    for s, f in sorted(set(keys.values()), key=lambda k: (-k[0], k[1])):
        pair = _pair([p for n, p in named if keys[n] == (s, f)], weight_decay)
        groups += [{**g, "lr": (lr or 0.0) * s, "lr_scale": s, "frozen_steps": f} for g in pair]
    return [g for g in groups if g["params"]]


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float, step: int) -> None:
    """Every param group's rate for the step with 0-based index `step`: lr times its lr_scale, or 0 while step is
    below its frozen_steps. Like set_weight_decay, this reaches the step DeepSpeed takes under any ZeRO stage."""
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if step < group.get("frozen_steps", 0) else lr * group.get("lr_scale", 1.0)


def _pair(params: list, weight_decay: float) -> list[dict]:
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "decay": True},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "decay": False, "lars": False}]


def set_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> None:
    """The weight decay of the decayed group(s) (a schedule's value for this step). ZeRO keeps the param-group
    dicts of the optimizer it wraps, so setting them here reaches the step DeepSpeed takes."""
    for group in optimizer.param_groups:
        if group.get("decay"):
            group["weight_decay"] = value


def _grads_finite(optimizer: torch.optim.Optimizer) -> bool:
    """True when every gradient this optimizer holds is finite on every rank (a collective under ZeRO, where
    each rank holds a different partition)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norms = [torch.linalg.vector_norm(p.grad.float()) for p in params if p.grad is not None]
    finite = not norms or bool(torch.isfinite(torch.stack(norms).sum()))
    bad = torch.tensor([0.0 if finite else 1.0], device=params[0].device if params else "cpu")  # NCCL: on the GPU
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0.0


def guard_nonfinite(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make optimizer.step() a no-op (counted in `optimizer.skipped`) when any gradient is inf/NaN. DeepSpeed calls
    the step of the optimizer it was given (ZeRO: on the fp32 partitions), so this covers every stage."""
    step = optimizer.step
    optimizer.skipped = 0

    def guarded(self, *args, **kwargs):
        if not _grads_finite(self):
            self.skipped += 1
            return None
        return step(*args, **kwargs)

    optimizer.step = types.MethodType(guarded, optimizer)  # bound, as torch's LR schedulers expect
    return optimizer


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """cfg: the optim config section (name, lr, weight_decay, momentum for LARS, beta1/beta2 for AdamW)."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr)
    if cfg.name == "lars":
        return guard_nonfinite(LARS(groups, lr=cfg.lr, momentum=cfg.momentum))
    for g in groups:
        g.pop("lars", None)
    return guard_nonfinite(torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2)))
