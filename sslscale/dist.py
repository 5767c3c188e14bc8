"""torch.distributed helpers: rank, world size, an all-gather that carries gradients back, one that does not, one of
rows whose count differs per rank, a sum.

Everything works single-process too (no process group: world size 1, gather is the identity).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's (n, ...) tensor into (world * n, ...).
    Backward: each rank's slice receives the sum over ranks of the gradients flowing into it (all-reduce, then
    slice), so the gradient of a loss summed over ranks reaches every embedding. Uses all_reduce rather than
    reduce_scatter because gloo (CPU) has no reduce_scatter."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.n, ctx.rank = x.shape[0], rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' x concatenated in rank order, differentiable; x itself when not distributed.
    Every rank must pass the same shape."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' x concatenated in rank order, detached: no gradient flows back to any rank (MoCo's keys).
    x.detach() when not distributed. Every rank must pass the same shape."""
    x = x.detach()
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _comm_device() -> torch.device:
    """Where collectives take their tensors: the GPU under NCCL (which takes no CPU tensors), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's x (same shape everywhere), detached, on x's device; x itself when not distributed
    (DINO's centre, the rows a checkpoint's position counts)."""
    x = x.detach().clone()
    if world_size() > 1:
        summed = x.to(_comm_device())
        dist.all_reduce(summed)
        x = summed.to(x.device)
    return x


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's (n_r, ...) tensor concatenated in rank order, on the CPU, where n_r may differ per rank (padded
    to the longest for the exchange); x itself when not distributed. Used on a few KB (train: the stream's position)."""
    if world_size() == 1:
        return x
    device = _comm_device()
    n = torch.tensor([x.shape[0]], device=device)
    sizes = [torch.empty_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype, device=device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu()
