"""NT-Xent: against a reference formula written here, a permutation property, and the 2-worker gather property."""
import math

import pytest
import torch
import torch.nn.functional as F

from distributed import spawn_gloo
from sslscale.methods.simclr import nt_xent


def reference_nt_xent(z0, z1, t):
    """Chen et al. 2020, eq. (1), averaged over all 2N anchors; written with loops on purpose."""
    z = F.normalize(torch.cat([z0, z1]).double(), dim=1)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / n2


def test_matches_reference_formula():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    loss, acc = nt_xent(z0, z1, 0.3)
    assert float(loss) == pytest.approx(reference_nt_xent(z0, z1, 0.3), rel=1e-5)
    assert 0.0 <= float(acc) <= 1.0


def test_invariant_to_batch_order_and_perfect_pairs_score_high():
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    perm = torch.randperm(8, generator=g)
    assert float(nt_xent(z0, z1, 0.5)[0]) == pytest.approx(float(nt_xent(z0[perm], z1[perm], 0.5)[0]), rel=1e-6)
    aligned, acc = nt_xent(torch.eye(8), torch.eye(8), 0.1)
    assert float(acc) == 1.0 and float(aligned) < float(nt_xent(z0, z1, 0.1)[0])


def _worker(rank, world, z0, z1):
    n = len(z0) // world
    a = z0[rank * n:(rank + 1) * n].clone().requires_grad_()
    b = z1[rank * n:(rank + 1) * n].clone().requires_grad_()
    loss, _ = nt_xent(a, b, 0.2)
    loss.backward()
    return float(loss), a.grad.clone(), b.grad.clone()


def test_two_workers_equal_single_process_loss_and_gradients():
    g = torch.Generator().manual_seed(2)
    z0, z1 = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    full, _ = nt_xent(a, b, 0.2)
    full.backward()
    world = 2
    results = spawn_gloo(_worker, z0, z1, world=world)
    # The loss each worker returns averages over its own anchors; DeepSpeed averages over workers.
    assert sum(r[0] for r in results) / world == pytest.approx(float(full), rel=1e-5)
    # Each worker's embedding gradient is the gradient of the summed worker losses = world x the full gradient.
    got_a = torch.cat([r[1] for r in results]) / world
    got_b = torch.cat([r[2] for r in results]) / world
    assert torch.allclose(got_a, a.grad, atol=1e-6) and torch.allclose(got_b, b.grad, atol=1e-6)
