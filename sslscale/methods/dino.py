"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Self-distillation without labels: a student (encoder -> DINO head) matches the output distribution that a teacher,
an EMA of the student (MomentumMethod), gives of a different crop of the same image. Multi-crop: the teacher sees
the two global views, the student all views (2 global + data.n_local small local ones). With teacher outputs t
(centred by c and sharpened by a low temperature tau_t) and student outputs s (temperature tau_s):

    loss = mean over pairs (teacher view a, student view b != a) of  - sum_k P_t(a)_k log P_s(b)_k
    P_t = softmax((t - c) / tau_t),  P_s = softmax(s / tau_s),  c <- m c + (1 - m) mean_batch(t)

Centering (c, over the global batch) and sharpening together avoid collapse. tau_t rises linearly from
cfg.teacher_temp_start to cfg.teacher_temp over cfg.teacher_temp_warmup steps (paper 0.04 -> 0.07 over 30
epochs, tau_s 0.1, m 0.9); the teacher momentum follows 0.996 -> 1 on a cosine. Head: 3-layer MLP (GELU) to a
bottleneck (cfg.proj_dim; paper 256), l2-normalised, then a weight-normalised linear layer without bias to
cfg.out_dim prototypes (paper 65536, hidden 2048 = cfg.proj_hidden).

Distributed: the loss is a mean of per-image terms, so the mean of the workers' losses equals the single-process
loss; only the centre needs the global batch (an all-reduce of the teacher's summed outputs, no gradient).
The paper's other two stabilisers are config keys: cfg.freeze_last_layer keeps the prototypes still for the first
steps (paper: 1 epoch; here, as in DINOv2, their param group's learning rate is 0, see `frozen_steps`), and
optim.weight_decay_end gives the weight decay its cosine (paper 0.04 -> 0.4). The teacher temperature is a pure
function of the step forward receives.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale import dist
from sslscale.data.modalities.image import ImageLayout
from sslscale.methods.base import MomentumMethod, MomentumSection, drop_legacy_step_buffer
from sslscale.schedules import teacher_temperature


@dataclass
class DINOSection(MomentumSection):
    """method.dino.* (paper values in the module docstring); the multi-crop views are data.n_local and data.local_*."""

    out_dim: int = 4096  # prototypes: the head's output width (paper 65536)
    student_temp: float = 0.1  # student softmax temperature
    teacher_temp: float = 0.04  # teacher temperature after warmup (paper 0.04 - 0.07) ...
    teacher_temp_start: float = 0.04  # ... starting here ...
    teacher_temp_warmup: int = 0  # ... and rising linearly over these steps
    center_momentum: float = 0.9  # EMA of the teacher's mean output that centres it
    freeze_last_layer: int = 0  # steps at the start during which the prototypes' learning rate is 0 (paper: 1 epoch)

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [*super().checks(cfg), ("out_dim", self.out_dim > 0, "a positive number"),
                ("student_temp", self.student_temp > 0, "a positive number"),
                ("teacher_temp", self.teacher_temp > 0 and self.teacher_temp_start > 0,
                 "positive (and teacher_temp_start)"),
                ("teacher_temp_warmup", self.teacher_temp_warmup >= 0, "0 or more steps"),
                ("center_momentum", 0 <= self.center_momentum < 1, "in [0, 1)"),
                ("freeze_last_layer", self.freeze_last_layer >= 0, "0 or more steps")]


class DINOHead(nn.Module):
    """Linear-GELU-Linear-GELU-Linear to `bottleneck`, l2-normalise, then a linear layer to `out_dim` whose rows
    are unit vectors (weight normalisation with the gain fixed at 1, as the paper's norm_last_layer)."""

    def __init__(self, dim_in: int, hidden: int, bottleneck: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(h), dim=-1)  # (n, bottleneck)
        return z @ F.normalize(self.prototypes, dim=-1).T  # (n, out_dim) cosine scores


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """student: one (n, K) tensor per student view (global views first, in the teacher's order); teacher: one
    (n, K) per global view. Cross-entropy of the centred, sharpened teacher distribution of view a against the
    student's of every view b != a, averaged over pairs and images. Teacher targets carry no gradient."""
    targets = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    terms = [-(q * log_probs[b]).sum(dim=-1).mean() for a, q in enumerate(targets)
             for b in range(len(log_probs)) if b != a]
    return sum(terms) / len(terms)


class DINO(MomentumMethod):
    section = DINOSection

    def __init__(self, encoder: nn.Module, cfg, *, total_steps: int):
        head = DINOHead(encoder.feature_dim, cfg.proj_hidden, cfg.proj_dim, cfg.out_dim)
        super().__init__(encoder, cfg, head, nn.Identity(), total_steps=total_steps)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))  # restored with the skipped-step buffers
        self._register_load_state_dict_pre_hook(drop_legacy_step_buffer)

    def frozen_steps(self, name: str) -> int:
        """Steps at the start during which a parameter keeps still (optim.param_groups): the prototypes for
        cfg.freeze_last_layer steps. Their group's learning rate is 0 then, as in DINOv2; AdamW's moments still
        follow their gradient, so they start moving at the scheduled rate."""
        return self.cfg.freeze_last_layer if name == "head.prototypes" else 0

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, ImageLayout]:
        d = cfg.data
        return {"image": ImageLayout(n_views=2, n_local=d.n_local, local_size=d.local_size or None,
                                     local_scale=(d.local_min_scale, d.local_max_scale),
                                     per_view=cfg.method.section("dino").per_view())}

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        glob = torch.cat([batch["view_0"], batch["view_1"]])  # (2n, C, H, W)
        local = sorted(k for k in batch if k.startswith("local_"))
        h = self.encoder(glob)  # one pass per resolution, as DINO's MultiCropWrapper
        student = list(self.head(h).chunk(2))
        if local:
            student += list(self.head(self.encoder(torch.cat([batch[k] for k in local]))).chunk(len(local)))
        t = self.targets(glob).float()  # (2n, K)
        tau = teacher_temperature(step, self.cfg.teacher_temp_warmup, self.cfg.teacher_temp_start, self.cfg.teacher_temp)
        loss = dino_loss(student, list(t.chunk(2)), self.center, self.cfg.student_temp, tau)
        self._update_center(t)
        return {"loss": loss, "embeddings": h[: len(batch["view_0"])].detach(), "teacher_temp": torch.tensor(tau)}

    @torch.no_grad()
    def _update_center(self, t: torch.Tensor) -> None:
        """c <- m c + (1 - m) * mean of the teacher outputs over the global batch (all workers)."""
        total = torch.cat([t.sum(dim=0), t.new_tensor([len(t)])])
        total = dist.all_reduce_sum(total)
        self.center.mul_(self.cfg.center_momentum).add_(total[:-1] / total[-1], alpha=1 - self.cfg.center_momentum)

