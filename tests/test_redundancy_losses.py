"""Barlow Twins and VICReg: against reference formulas written here (float64 loops), properties (batch order,
perfect / collapsed embeddings), the 2-worker gather property with gradients, and a forward+backward of each Method."""
import functools

import numpy as np
import pytest
import torch

from distributed import spawn_gloo
from sslscale.checks import validate
from sslscale.config import Config
from sslscale.encoders.resnet import ResNet
from sslscale.errors import SslscaleError
from sslscale.methods import method_class
from sslscale.methods.barlow import barlow_twins_loss
from sslscale.methods.vicreg import vicreg_loss


def _columns(z):
    """(N, d) tensor -> list of d float64 numpy columns."""
    x = z.double().numpy()
    return [x[:, k] for k in range(x.shape[1])]


def reference_barlow(z0, z1, lambd, eps=1e-5):
    """Zbontar et al. 2021, eq. (1), with each dimension standardised over the batch (BatchNorm1d, eps 1e-5)."""
    n = len(z0)
    a = [(c - c.mean()) / np.sqrt(((c - c.mean()) ** 2).sum() / n + eps) for c in _columns(z0)]
    b = [(c - c.mean()) / np.sqrt(((c - c.mean()) ** 2).sum() / n + eps) for c in _columns(z1)]
    total = 0.0
    for i in range(len(a)):
        for j in range(len(b)):
            c_ij = sum(a[i][k] * b[j][k] for k in range(n)) / n
            total += (1 - c_ij) ** 2 if i == j else lambd * c_ij ** 2
    return total


def reference_vicreg(z0, z1, sim, std, cov):
    """Bardes et al. 2022, eqs. (1)-(6), with the N - 1 variance and covariance of the official code."""
    n, d = z0.shape
    x0, x1 = z0.double().numpy(), z1.double().numpy()
    invariance = sum((x0[k, i] - x1[k, i]) ** 2 for k in range(n) for i in range(d)) / (n * d)
    variance, covariance = 0.0, 0.0
    for cols in (_columns(z0), _columns(z1)):
        centred = [c - c.mean() for c in cols]
        variance += sum(max(0.0, 1 - np.sqrt((c ** 2).sum() / (n - 1) + 1e-4)) for c in centred) / d / 2
        covariance += sum(((ci * cj).sum() / (n - 1)) ** 2 for i, ci in enumerate(centred)
                          for j, cj in enumerate(centred) if i != j) / d
    return sim * invariance + std * variance + cov * covariance


def _pair(seed, n=10, d=5):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g)
    return z0, 0.7 * z0 + 0.5 * torch.randn(n, d, generator=g)  # correlated views, as training produces


def test_barlow_matches_reference_formula():
    z0, z1 = _pair(0)
    loss, on_diag, off_diag = barlow_twins_loss(z0, z1, 0.3)
    assert float(loss) == pytest.approx(reference_barlow(z0, z1, 0.3), rel=1e-5)
    assert float(loss) == pytest.approx(float(on_diag) + 0.3 * float(off_diag), rel=1e-6)


def test_vicreg_matches_reference_formula():
    z0, z1 = _pair(1)
    z0 = z0 * torch.linspace(0.2, 2.0, 5)  # some dimensions below std 1, some above: both sides of the hinge
    loss, inv, var, cov = vicreg_loss(z0, z1, 25.0, 25.0, 1.0)
    assert float(loss) == pytest.approx(reference_vicreg(z0, z1, 25.0, 25.0, 1.0), rel=1e-5)
    assert float(var) > 0 and float(loss) == pytest.approx(25 * float(inv) + 25 * float(var) + float(cov), rel=1e-6)
    assert float(vicreg_loss(z0, z1, 1.0, 2.0, 3.0)[0]) == pytest.approx(reference_vicreg(z0, z1, 1, 2, 3), rel=1e-5)


@pytest.mark.parametrize("loss_fn", [functools.partial(barlow_twins_loss, lambd=0.0051), vicreg_loss])
def test_invariant_to_batch_order(loss_fn):
    z0, z1 = _pair(2, n=16, d=6)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    assert float(loss_fn(z0[perm], z1[perm])[0]) == pytest.approx(float(loss_fn(z0, z1)[0]), rel=1e-5)


def test_barlow_identical_decorrelated_views_give_zero_loss():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(dim=0))  # (64, 8): zero-mean, mutually orthogonal columns
    loss, _, off_diag = barlow_twins_loss(q.float(), q.float(), 1.0)
    assert float(loss) < 1e-4 and float(off_diag) < 1e-6
    unrelated = barlow_twins_loss(q.float(), torch.randn(64, 8, generator=g), 1.0)[0]
    assert float(unrelated) > 4.0  # the diagonal alone is near d = 8 when the views are unrelated


def test_vicreg_collapse_shows_in_the_variance_term():
    z0, z1 = _pair(5, n=32, d=8)
    collapsed = torch.ones(32, 8) * torch.randn(8) + 1e-6 * torch.randn(32, 8)
    loss, inv, var, cov = vicreg_loss(collapsed, collapsed)
    assert float(var) > 0.98 and float(inv) < 1e-9 and float(cov) < 1e-9  # std ~ sqrt(1e-4): hinge ~ 0.99
    assert float(loss) == pytest.approx(25 * float(var), rel=1e-4)
    assert float(vicreg_loss(3 * z0, 3 * z1)[2]) == 0.0  # spread-out embeddings: the hinge is off


LOSSES = {"barlow_twins": functools.partial(barlow_twins_loss, lambd=0.1), "vicreg": vicreg_loss}


def _worker(rank, world, z0, z1):
    n = len(z0) // world
    out = {}
    for name, loss_fn in LOSSES.items():
        a = z0[rank * n:(rank + 1) * n].clone().requires_grad_()
        b = z1[rank * n:(rank + 1) * n].clone().requires_grad_()
        loss = loss_fn(a, b)[0]
        loss.backward()
        out[name] = (float(loss), a.grad.clone(), b.grad.clone())
    return out


def test_two_workers_equal_single_process_loss_and_gradients():
    z0, z1 = _pair(6, n=12, d=6)
    world = 2
    results = spawn_gloo(_worker, z0, z1, world=world)
    for name, loss_fn in LOSSES.items():
        a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
        full = loss_fn(a, b)[0]
        full.backward()
        losses = [r[name][0] for r in results]
        # Every worker computes the global loss, so DeepSpeed's average over workers is the single-process loss...
        assert losses == pytest.approx([full.item()] * world, rel=1e-5), name
        # ...and each worker's embeddings get world x their share of the full gradient (the sum over workers'
        # identical losses), so the gradient DeepSpeed averages over workers is the single-process one.
        got_a = torch.cat([r[name][1] for r in results]) / world
        got_b = torch.cat([r[name][2] for r in results]) / world
        assert torch.allclose(got_a, a.grad, rtol=1e-4, atol=1e-6), name
        assert torch.allclose(got_b, b.grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("name, logs", [("barlow_twins", {"on_diag", "off_diag"}),
                                        ("vicreg", {"invariance", "variance", "covariance"})])
def test_method_runs_forward_and_backward_on_a_tiny_resnet(name, logs):
    torch.manual_seed(0)
    cfg = Config().override([f"method.name={name}", f"method.{name}.proj_hidden=32", f"method.{name}.proj_dim=16"])
    encoder = ResNet(in_channels=1, image_size=8, widths=(8, 16), depths=(1, 1))
    method = method_class(name)(encoder, cfg.method.chosen)
    out = method({"view_0": torch.rand(8, 1, 8, 8), "view_1": torch.rand(8, 1, 8, 8)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and logs <= set(out)
    assert out["embeddings"].shape == (8, 16) and not out["embeddings"].requires_grad
    assert all(not out[k].requires_grad and out[k].dim() == 0 for k in logs)
    assert encoder.stem[0].weight.grad is not None and torch.isfinite(encoder.stem[0].weight.grad).all()


@pytest.mark.parametrize("item", ["method.barlow_twins.lambd=-1", "method.vicreg.sim_coeff=-1",
                                  "method.vicreg.std_coeff=-0.5", "method.vicreg.cov_coeff=-2"])
def test_validate_rejects_negative_weights(item):
    name = item.split(".")[1]
    with pytest.raises(SslscaleError, match=item.split("=")[0] + ": must be 0 or more"):
        validate(Config().override([f"method.name={name}", item]))
    validate(Config().override(["method.name=vicreg", "method.barlow_twins.lambd=-1"]))  # not vicreg's section
