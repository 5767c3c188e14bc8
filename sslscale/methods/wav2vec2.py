"""wav2vec 2.0 (Baevski et al. 2020, "wav2vec 2.0: A Framework for Self-Supervised Learning of Speech
Representations"), on raw 16 kHz waveforms (encoders/wav2vec.py).

The stream crops each clip to `crop` samples and draws the masks and distractors (modalities.audio.span_masks, on
Ray Data's tasks, a function of (seed, epoch, sample id)): every frame starts a span of mask_length masked frames
with probability mask_prob, and each masked frame gets num_negatives distractor frames from the other masked frames
of the same clip. The feature encoder turns the clip into local features z_t; the masked frames' projected features
are replaced by one learned vector and the context network gives c_t. A Gumbel-softmax product quantiser turns each
z_t (unmasked) into q_t: G groups each pick one of V learned codes (straight-through hard choice, temperature tau),
concatenated and projected. For a masked frame t with distractors Q_t:

    L_m = - log  exp(sim(c_t, q_t) / kappa) / sum over q in {q_t} + Q_t of exp(sim(c_t, q) / kappa)

with sim the cosine similarity of the projected c_t and q (a distractor whose code equals q_t's is left out, as
fairseq does; here: the same code in every group), averaged over the masked frames of the global batch
(methods.token_loss). The diversity loss L_d = (GV - sum_g exp(H(p_g))) / GV, with p_g group g's softmax over its
codes averaged over the global batch's frames, pushes the quantiser to use every code. loss = L_m + diversity_weight
x L_d. The temperature tau decays from gumbel_start by gumbel_decay a step to gumbel_end (the paper: 2 to 0.5 by
0.999995 over 400k updates; here by 0.998, which reaches 0.5 after ~700 steps).

Scaled to 2 CPU cores: a 4-block transformer 128 wide on 1 s crops (the median clip is 1.1 s long) (the paper's
BASE: 12 blocks, 768 wide, 512 conv channels, crops of up to 15.6 s), G = 2 groups of V = 16 codes (paper 2 x 320;
on this corpus 400 steps of a tiny model reached a contrastive loss of 2.94 with V = 16 and 3.01 with V = 64, chance
3.04), K = 20 distractors (paper 100), a 64-wide comparison space (paper 256). Left out: the paper's L2 penalty on
the local features and dropout. Logged: contrastive and diversity terms, the masked frames' accuracy (the positive
ranked first), prob_perplexity (sum over groups of exp of the averaged soft choices' entropy) and code_perplexity
(the same of the hard choices: how many codes are in use), and the temperature.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslscale import dist
from sslscale.data.modalities.audio import AudioLayout
from sslscale.encoders.wav2vec import HOP, RECEPTIVE
from sslscale.errors import SslscaleError
from sslscale.methods.base import Method, Section, token_loss


@dataclass
class Wav2Vec2Section(Section):
    """method.wav2vec2.* (the paper's values where they fit these CPUs; see the module docstring)."""

    crop: int = 16000  # samples of each clip a step reads: a random window of a longer clip (1 s at 16 kHz)
    mask_prob: float = 0.065  # probability that a frame starts a masked span
    mask_length: int = 10  # frames a span masks (M)
    num_negatives: int = 20  # distractors per masked frame, from the same clip (K)
    codebook_groups: int = 2  # G
    codebook_entries: int = 16  # V, codes per group (the paper's 320 for 960 h of speech; 16 learnt fastest here)
    final_dim: int = 64  # width of the space contexts and quantised targets are compared in
    temperature: float = 0.1  # kappa of the contrastive loss
    diversity_weight: float = 0.1  # alpha
    gumbel_start: float = 2.0  # the Gumbel-softmax temperature at step 0 ...
    gumbel_decay: float = 0.998  # ... times this per step ...
    gumbel_end: float = 0.5  # ... down to this

    def checks(self, cfg) -> list[tuple[str, bool, str]]:
        span = RECEPTIVE + HOP * self.mask_length  # samples of one masked span's frames
        return [("crop", self.crop >= span, f"at least {span} samples (one masked span)"),
                ("mask_prob", 0 < self.mask_prob < 1, "in (0, 1)"),
                ("mask_length", self.mask_length >= 1, "at least 1"),
                ("num_negatives", self.num_negatives >= 1, "at least 1"),
                ("codebook_groups", self.codebook_groups >= 1 and self.final_dim % self.codebook_groups == 0,
                 "at least 1, dividing final_dim"),
                ("codebook_entries", self.codebook_entries >= 2, "at least 2"),
                ("temperature", self.temperature > 0, "positive"),
                ("diversity_weight", self.diversity_weight >= 0, "at least 0"),
                ("gumbel_decay", 0 < self.gumbel_decay <= 1, "in (0, 1]"),
                ("gumbel_end", 0 < self.gumbel_end <= self.gumbel_start, "in (0, gumbel_start]")]


class Quantizer(nn.Module):
    """A Gumbel-softmax product quantiser: features (..., C) -> (codes (..., dim), logits (..., G, V)). Training
    picks each group's code from its logits plus Gumbel noise at temperature tau, hard in the forward pass and
    through the softmax in the backward (straight-through); eval mode (or `noise` off) picks the argmax."""

    def __init__(self, width: int, groups: int, entries: int, dim: int):
        super().__init__()
        self.groups, self.entries = groups, entries
        self.weight_proj = nn.Linear(width, groups * entries)
        self.codevectors = nn.Parameter(torch.empty(groups * entries, dim // groups).uniform_())
        self.project = nn.Linear(dim, dim)
        self.noise = True
        nn.init.normal_(self.weight_proj.weight, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)

    def forward(self, z: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes (..., dim), logits (..., G, V), each group's chosen code (..., G))."""
        logits = self.weight_proj(z)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).unflatten(-1, (self.groups, self.entries))
        scores = logits
        if self.training and self.noise:
            scores = logits - torch.empty_like(logits).exponential_().log()  # + Gumbel(0, 1) noise
        soft = torch.softmax(scores / tau, dim=-1)
        index = soft.argmax(dim=-1)
        hard = F.one_hot(index, self.entries).to(soft.dtype)
        choice = hard + soft - soft.detach() if self.training else hard  # (..., G, V)
        codes = torch.einsum("...gv,gvd->...gd", choice.to(self.codevectors.dtype),
                             self.codevectors.unflatten(0, (self.groups, self.entries)))
        return self.project(codes.flatten(-2)), logits, index


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """Sum over groups of exp(entropy) of each group's distribution over its codes: probs (G, V), rows summing to 1."""
    return torch.exp(-(probs * torch.log(probs.clamp(min=1e-7))).sum(dim=-1)).sum()


def contrastive_logits(c: torch.Tensor, q: torch.Tensor, negatives: torch.Tensor, same: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """(M, 1 + K) cosine similarities / temperature, in float32 or wider, of each context c (M, D) with its target
    q (M, D) (column 0) and its distractors (M, K, D); a distractor whose codes are the target's (`same`, (M, K))
    is -inf."""
    dtype = torch.promote_types(c.dtype, torch.float32)
    targets = torch.cat([q[:, None], negatives], dim=1).to(dtype)  # (M, 1 + K, D)
    logits = F.cosine_similarity(c.to(dtype)[:, None], targets, dim=-1) / temperature
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)


class Wav2Vec2(Method):
    section = Wav2Vec2Section
    modality = "audio"

    def __init__(self, encoder: nn.Module, cfg):
        super().__init__(encoder, cfg)
        self.mask_emb = nn.Parameter(torch.empty(encoder.feature_dim).uniform_())
        self.quantizer = Quantizer(encoder.conv_dim, cfg.codebook_groups, cfg.codebook_entries, cfg.final_dim)
        self.final_proj = nn.Linear(encoder.feature_dim, cfg.final_dim)

    @staticmethod
    def views(cfg, sizes: dict[str, int]) -> dict[str, AudioLayout]:
        """A crop of each clip ("wave"), its masked frames ("mask") and their distractors ("distractors")."""
        s = cfg.method.chosen
        return {"audio": AudioLayout(crop=s.crop, mask_prob=s.mask_prob, mask_length=s.mask_length,
                                     num_negatives=s.num_negatives, frame_hop=HOP, frame_receptive=RECEPTIVE)}

    def tau(self, step: int) -> float:
        """The Gumbel-softmax temperature at `step`."""
        return max(self.cfg.gumbel_end, self.cfg.gumbel_start * self.cfg.gumbel_decay ** step)

    def diversity(self, logits: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(diversity loss, prob_perplexity, code_perplexity) over the global batch's valid frames; the loss's
        gradient reaches every worker's frames (dist.gather_with_grad)."""
        weight = valid[..., None, None].float()  # (N, F, 1, 1)
        soft = (torch.softmax(logits, dim=-1) * weight).sum(dim=(0, 1))  # (G, V)
        hard = (F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float() * weight).sum(dim=(0, 1))
        count = dist.all_reduce_sum(valid.sum().float()).clamp(min=1)
        soft = dist.gather_with_grad(soft[None]).sum(dim=0) / count
        hard = dist.all_reduce_sum(hard) / count
        groups, entries = soft.shape
        prob_perplexity = perplexity(soft)
        return (groups * entries - prob_perplexity) / (groups * entries), prob_perplexity, perplexity(hard)

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        z, valid = self.encoder.frames(batch["wave"])  # (N, F, C), (N, F)
        mask, negatives = batch["mask"].bool(), batch["distractors"]
        if mask.shape != valid.shape:
            raise SslscaleError(f"wav2vec2: the stream masked {mask.shape[1]} frames but the encoder made "
                                f"{valid.shape[1]}: the corpus's clips and method.wav2vec2.crop disagree")
        x = self.encoder.embed.proj(z)
        x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        c = self.encoder.context(x, valid)  # (N, F, D)
        tau = self.tau(step)
        q, logits, index = self.quantizer(z, tau)  # (N, F, final_dim), (N, F, G, V), (N, F, G)
        chosen = mask & valid
        rows = torch.arange(len(q), device=q.device)[:, None, None].expand_as(negatives)
        same = (index[rows, negatives] == index[:, :, None]).all(dim=-1)  # (N, F, K): a distractor of the same codes
        scores = contrastive_logits(self.final_proj(c[chosen]), q[chosen], q[rows, negatives][chosen], same[chosen],
                                    self.cfg.temperature)
        contrastive, accuracy, _ = token_loss(scores, torch.zeros(len(scores), dtype=torch.long,
                                                                  device=scores.device))
        diversity, prob_perplexity, code_perplexity = self.diversity(logits, valid)
        return {"loss": contrastive + self.cfg.diversity_weight * diversity, "contrastive": contrastive.detach(),
                "diversity": diversity.detach(), "masked_acc": accuracy, "prob_perplexity": prob_perplexity.detach(),
                "code_perplexity": code_perplexity, "gumbel_tau": torch.tensor(tau),
                "embeddings": self.encoder.pool(c, valid).detach()}
