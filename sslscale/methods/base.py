"""What every pretext method builds on: `Method`, its config `Section`, and the pieces several methods share.

The interface every method follows (see `Method`): `views` says what the Ray Data stream makes for it, `inputs` the
batch fields `forward` then receives and their kinds (float views, integer ids), which is what the engine moves to
the device. `forward(batch)` receives those fields and returns a dict with `loss` (scalar), `embeddings`
(the encoder's features of the first view, detached, for the label-free health metrics) and any scalar logs.
`after_step(step)` runs after each applied optimizer step (EMA teachers).
A method's own config keys are a `Section` dataclass, `method.<name>.<key>`, that checks its own values; keys several
methods use are declared once (`HeadSection`, `MomentumSection`) and repeated in each section that inherits them.
Shared pieces: `projector` (the Linear-BN-ReLU MLP heads), `encode_pair` (both views in one encoder pass),
`ema_copy` / `ema_update` (momentum teachers), `MomentumMethod` (online network + EMA teacher: BYOL, MoCo v3) and
`token_loss` (the text methods' cross-entropy over the global batch).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale import dist
from sslscale.data.modalities.base import Layout
from sslscale.data.modalities.image import ImageLayout
from sslscale.schedules import cosine_momentum


@dataclass
class Section:
    """A method's config section, `method.<name>.<key>` (config.MethodConfig makes the ones a config uses). A subclass
    declares the method's keys with their defaults and a comment each, and `checks` its own values."""

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        """(key, ok, allowed) for checks.validate, which reports the first that fails; a key without a dot is one of
        this section's, one with a dot is the whole config's (cfg: the Config, for checks across sections)."""
        return []


@dataclass
class HeadSection(Section):
    """An MLP head's widths (methods.projector): SimCLR, Barlow Twins, VICReg, BYOL, MoCo v3, DINO."""

    proj_hidden: int = 512  # hidden width of the projector (and predictor; DINO: of its head's MLP)
    proj_dim: int = 128  # output width of the projector (DINO: the bottleneck before the prototypes)

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [("proj_hidden", self.proj_hidden > 0, "a positive width"),
                ("proj_dim", self.proj_dim > 0, "a positive width")]


@dataclass
class MomentumSection(HeadSection):
    """A momentum teacher's EMA schedule (MomentumMethod), and BYOL's asymmetric views, which MoCo v3 and DINO
    use too: BYOL, MoCo v3, DINO."""

    momentum: float = 0.996  # EMA teacher momentum at step 0 ...
    momentum_final: float = 1.0  # ... rising on a cosine to this at train.steps
    # blur and solarisation probabilities of the two global views, each view its own: "view 0,view 1" (BYOL's paper:
    # blur 1.0,0.1 and solarize 0,0.2); empty: data.blur and data.solarize for both
    view_blur: str = ""
    view_solarize: str = ""

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        return [*super().checks(cfg), ("momentum", 0 <= self.momentum <= 1, "in [0, 1]"),
                ("momentum_final", self.momentum <= self.momentum_final <= 1, "in [momentum, 1]"),
                *[(key, _two_probabilities(getattr(self, key)) is not None,
                   "empty, or two probabilities in [0, 1] for the two global views, e.g. 1.0,0.1")
                  for key in ("view_blur", "view_solarize")]]

    def per_view(self) -> tuple[dict, ...]:
        """views.batch_views' per_view: ViewSpec fields the two global views override ((): none)."""
        blur, solarize = _two_probabilities(self.view_blur), _two_probabilities(self.view_solarize)
        if not (blur or solarize):
            return ()
        return tuple({**({"blur": blur[v]} if blur else {}), **({"solarize": solarize[v]} if solarize else {})}
                     for v in range(2))


def _two_probabilities(text: str) -> tuple[float, ...] | None:
    """"" -> (); "1.0,0.1" -> (1.0, 0.1); None unless empty or two numbers in [0, 1]."""
    try:
        values = tuple(float(v) for v in text.split(",")) if text.strip() else ()
    except ValueError:
        return None
    return values if len(values) in (0, 2) and all(0 <= v <= 1 for v in values) else None


class Method(nn.Module):
    """Base class: an encoder plus whatever heads and teachers the pretext task needs. `section` is the dataclass
    of its config keys (an instance arrives as `cfg` in __init__). `FP32_MODULES` names the submodules the engine
    keeps in fp32 under bf16 training (EMA teachers: a 1e-3 step vanishes in bf16). `ENCODER` holds encoder keyword
    arguments the method fixes over the model config's (GPT: causal). `modality` is the kind of data it trains on
    (modalities.KINDS): a corpus's data field must be of that kind."""

    section: type[Section] = Section
    modality = "image"
    FP32_MODULES: tuple[str, ...] = ()
    ENCODER: dict = {}

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg

    @classmethod
    def towers(cls, section) -> dict[str, tuple[str, dict]]:
        """Encoders besides `encoder`, one per further kind of data the method reads: {kind: (encoder family, its
        keyword arguments)} from the method's `section` (CLIP: {"text": ("text", {dim, depth, heads})}).
        build_method builds each for its field's input spec and hands them to __init__ as `towers`; the corpus
        must hold a field of each kind. `encoder` stays the one probed, monitored and exported as the encoder."""
        return {}

    def tower_modules(self) -> dict[str, nn.Module]:
        """The towers build_method handed __init__, by kind ({} without): what an export carries beside `encoder`."""
        return {}

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, Layout]:
        """What the Ray Data stream makes from each record: a typed Layout per kind of field the method reads
        (modalities: ImageLayout, TextLayout), `sizes` the corpus's fields' sizes by kind (an image's side, a
        passage's length). By default two global views of the image; DINO adds local views, MAE one view and the
        visible patch ids, a method of image-caption pairs a layout for each. Static, so the driver plans the
        stream from the config alone."""
        return {"image": ImageLayout(n_views=2)}

    @classmethod
    def inputs(cls, cfg, sizes: dict[str, int]) -> dict[str, str]:
        """The batch fields forward receives, each with its kind (views.KINDS): "pixels" are uint8 (N, C, H, W)
        that the engine makes floats in [0, 1] in its dtype, "ids" integers it moves as they are: the fields the
        stream makes for `views`. The engine refuses a field not listed here."""
        out: dict[str, str] = {}
        for layout in cls.views(cfg, sizes).values():
            out.update(layout.fields())
        return out

    def sizes(self) -> dict[str, int]:
        """The sizes of the fields it reads, by kind, from its encoder (`views`' and `inputs`' argument on the
        workers); a method with an encoder per kind names each."""
        return {self.encoder.modality: self.encoder.input_size}

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        """The loss of a batch of `inputs` at `step`, the 0-based index of the optimizer step it is for (skipped
        steps counted): the training loop owns every schedule, and a method that follows one (DINO's teacher
        temperature) computes it from this step as a pure function."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after every applied optimizer step with DeepSpeed's global step (which also counts skipped
        steps, like the LR schedule); teachers update here. Not called for a skipped step."""


def drop_legacy_step_buffer(state_dict: dict, prefix: str, *args) -> None:
    """A load_state_dict pre-hook: checkpoints written before the loop owned the schedules carry a `steps_done`
    buffer (DINO, the denoising autoencoder) that the step forward receives replaced; it is dropped on load."""
    state_dict.pop(prefix + "steps_done", None)


def projector(dim_in: int, hidden: int, dim_out: int, hidden_layers: int = 1, last_bn: bool = False) -> nn.Sequential:
    """MLP head: `hidden_layers` x (Linear(no bias) - BatchNorm1d - ReLU) to width `hidden`, then Linear to dim_out
    (then BatchNorm1d without affine parameters when `last_bn`, as MoCo v3's projector ends).
    SimCLR, BYOL and MoCo v3 (ResNet) use one hidden layer; Barlow Twins and VICReg use two."""
    layers, width = [], dim_in
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, dim_out))
    return nn.Sequential(*layers, *([nn.BatchNorm1d(dim_out, affine=False)] if last_bn else []))


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of token predictions (masked LM, next token) over the global batch, for this worker's share:
    (loss, accuracy, perplexity).

    logits: (M, V) the head's scores at this worker's M chosen positions; targets: (M,) their original ids.
    loss = world x (this worker's summed cross-entropy) / (chosen positions in the global batch), so its average over
    workers is the single-process loss on the concatenated batch (workers hold different numbers of chosen tokens,
    so the mean of per-worker means would not be); accuracy: the global batch's share of chosen positions whose
    top score is the original id, and perplexity: exp of the global mean cross-entropy, the same on every worker."""
    ce = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, reduction="sum")
    correct = (logits.argmax(dim=-1) == targets).sum()
    local = torch.stack([torch.tensor(float(len(targets)), device=ce.device), correct.float(), ce.detach().float()])
    count, right, summed = dist.all_reduce_sum(local).unbind()
    count = count.clamp(min=1)
    return ce * (dist.world_size() / count.to(ce.dtype)), right / count, (summed / count).exp()


def encode_pair(encoder: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor]):
    """Both views through encoder and head in one pass (so BatchNorm sees one batch).
    Returns (h0, z0, z1): encoder features of view 0 (n, D) and head outputs of view 0 and view 1 (n, d) each."""
    x = torch.cat([batch["view_0"], batch["view_1"]])  # (2n, C, H, W)
    h = encoder(x)  # (2n, D)
    z0, z1 = head(h).chunk(2)  # (n, d) each
    return h[: len(z0)], z0, z1


def ema_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` with requires_grad off: an EMA teacher. The optimizer is built from trainable
    parameters only (optim.param_groups), so DeepSpeed never steps it and ZeRO never partitions its gradients;
    kept inside the Method, it is in the module state dict that DeepSpeed checkpoints and restores."""
    teacher = copy.deepcopy(module)
    return teacher.requires_grad_(False)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter; buffers (BatchNorm
    running statistics) copied from the student. Both modules must have the same structure.

    Reads whole student parameters, which every rank holds after the step under ZeRO 0-2 (stages 1 and 2
    partition only the optimizer state and gradients), so every rank computes the same teacher without any
    communication. ZeRO-3 partitions the parameters themselves: there the engine runs after_step inside a gather
    of the method's parameters and re-partitions rank 0's result (Engine._after_step)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.to(t.dtype), 1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


class MomentumMethod(Method):
    """An online network (encoder -> head -> predictor, trained) and a momentum teacher (an EMA of encoder -> head,
    never trained) that provides the targets: BYOL and MoCo v3. Subclasses build `head` and `predictor` and turn
    `pair(batch)` into a loss; their section extends MomentumSection. After step k the teacher moves towards the
    online network with momentum cosine_momentum(k, total_steps, cfg.momentum, cfg.momentum_final); total_steps is
    the run's train.steps."""

    FP32_MODULES = ("teacher",)

    def __init__(self, encoder: nn.Module, cfg, head: nn.Module, predictor: nn.Module, *, total_steps: int):
        super().__init__(encoder, cfg)
        self.head, self.predictor = head, predictor
        self.teacher = ema_copy(nn.Sequential(encoder, head))
        self.total_steps = total_steps

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, Layout]:
        """Two global views, each with its own blur and solarisation where the section says (view_blur, ...)."""
        return {"image": ImageLayout(n_views=2, per_view=cfg.method.chosen.per_view())}

    def pair(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(h0, p0, p1, t0, t1): online encoder features of view 0 (n, D), online predictions of view 0 and view 1
        (n, d) each, and the teacher's projections of view 0 and view 1 (n, d) each, computed without gradient."""
        h0, z0, z1 = encode_pair(self.encoder, self.head, batch)
        p0, p1 = self.predictor(torch.cat([z0, z1])).chunk(2)  # (n, d) each
        t0, t1 = self.targets(torch.cat([batch["view_0"], batch["view_1"]])).to(z0.dtype).chunk(2)
        return h0, p0, p1, t0, t1

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's outputs for images x, without gradient: fp32 weights, the run's compute dtype (autocast)."""
        with torch.no_grad(), torch.autocast(x.device.type, dtype=x.dtype, enabled=x.dtype != torch.float32):
            return self.teacher(x.float())

    def after_step(self, step: int) -> None:
        momentum = cosine_momentum(step, self.total_steps, self.cfg.momentum, self.cfg.momentum_final)
        ema_update(self.teacher, nn.Sequential(self.encoder, self.head), momentum)
