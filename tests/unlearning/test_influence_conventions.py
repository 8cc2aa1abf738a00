"""Influence removal scalings (mean, sum, batch) and LiSSA damping conventions against an explicit Hessian inverse."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from healing_pl.unlearning.influence import cross_entropy_loss, influence_unlearn, lissa_inverse_hvp

N_TRAIN = 46  # remain 40 + forget 6


@pytest.fixture(scope="module")
def tiny():
    """A 31-parameter tanh MLP on 3 classes, trained briefly in float64; 40 remain and 6 forget points."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(46, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (46,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    remain = [(x[:40], y[:40])]  # one full batch: LiSSA sees the exact remain Hessian every step
    forget = [(x[40:44], y[40:44]), (x[44:], y[44:])]  # two forget batches, removed in turn
    return model, remain, forget


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _loss_at(model, theta, batch, reduction="mean"):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    params, i = {}, 0
    for name, shape in zip(names, shapes):
        k = int(torch.Size(shape).numel())
        params[name] = theta[i : i + k].reshape(shape)
        i += k
    x, y = batch
    return F.cross_entropy(functional_call(model, params, (x,)), y, reduction=reduction)


def _hessian(model, theta, batch):
    return torch.autograd.functional.hessian(lambda t: _loss_at(model, t, batch), theta)


def _grad_sum(model, theta, batch):
    t = theta.clone().requires_grad_(True)
    return torch.autograd.grad(_loss_at(model, t, batch, "sum"), t)[0]


def _settings(model, remain, forget=(), removal="mean"):
    """Damping (additive), scale and depth such that at every point the sequential update visits, H + d I is
    positive definite with the eigenvalues of (H + d I)/s in (0, 1), and LiSSA's error is below 1e-12."""
    d, s, rate = 0.05, 1.0, 0.0
    for _ in range(5):
        thetas = (
            [_flat(model)] + _explicit(model, remain, forget, removal, d, path=True)[:-1] if forget else [_flat(model)]
        )
        eigs = torch.cat([torch.linalg.eigvalsh(_hessian(model, t, remain[0])) for t in thetas])
        if float(eigs.min()) + d > 0.02:
            break
        d = -float(eigs.min()) + 0.05
    s = float(eigs.max()) + d + 1.0
    rate = 1 - (float(eigs.min()) + d) / s
    return d, s, int(math.log(1e-12) / math.log(rate)) + 1


def _explicit(model, remain, forget, removal, d, path=False):
    """The sequential update with explicit Hessians: theta += c(B) (H_R(theta) + d I)^-1 sum_B grad(theta)."""
    theta = _flat(model).clone()
    visited = []
    for batch in forget:
        a = _hessian(model, theta, remain[0]) + d * torch.eye(theta.numel(), dtype=theta.dtype)
        g = _grad_sum(model, theta, batch)
        c = {"mean": 1 / N_TRAIN, "sum": 1.0, "batch": 1 / len(batch[1])}[removal]
        theta = theta + c * torch.linalg.solve(a, g)
        visited.append(theta)
    return visited if path else theta


@pytest.mark.parametrize(
    "removal, convention", list(itertools.product(["mean", "sum", "batch"], ["additive", "koh_liang"]))
)
def test_influence_matches_explicit_inverse(tiny, removal, convention):
    model, remain, forget = tiny
    d, s, depth = _settings(model, remain, forget, removal)
    damping = d / s if convention == "koh_liang" else d  # Koh & Liang's d at scale s is an additive d * s
    new = influence_unlearn(
        model,
        cross_entropy_loss,
        remain,
        forget,
        n_train=N_TRAIN,
        damping=damping,
        scale=s,
        depth=depth,
        removal=removal,
        damping_convention=convention,
    )
    want = _explicit(model, remain, forget, removal, d)
    start = _flat(model)
    got_step, want_step = _flat(new) - start, want - start
    assert float(want_step.norm()) > 1e-4  # the update is not trivially small
    assert torch.allclose(got_step, want_step, rtol=1e-8, atol=1e-10 * float(want_step.norm()))


def test_removal_scalings_relate(tiny):
    """With one forget batch, sum = n * mean and batch = sum / |B| (the same LiSSA estimate, scaled)."""
    model, remain, forget = tiny
    d, s, depth = _settings(model, remain)
    one = [(torch.cat([b[0] for b in forget]), torch.cat([b[1] for b in forget]))]
    steps = {}
    for removal in ("mean", "sum", "batch"):
        new = influence_unlearn(
            model, cross_entropy_loss, remain, one, n_train=N_TRAIN, damping=d, scale=s, depth=depth, removal=removal
        )
        steps[removal] = _flat(new) - _flat(model)
    assert torch.allclose(steps["sum"], N_TRAIN * steps["mean"], rtol=1e-12, atol=0)
    assert torch.allclose(steps["batch"], steps["sum"] / 6, rtol=1e-12, atol=0)


def test_koh_liang_damping_is_additive_times_scale(tiny):
    model, remain, _ = tiny
    v = torch.linspace(-1, 1, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    # a short recursion (not converged): the two conventions agree step by step, not only at the fixed point
    kl = lissa_inverse_hvp(
        model, cross_entropy_loss, remain, v, damping=0.01, scale=8.0, depth=7, damping_convention="koh_liang"
    )
    add = lissa_inverse_hvp(model, cross_entropy_loss, remain, v, damping=0.08, scale=8.0, depth=7)
    assert torch.allclose(kl, add, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(
        kl, lissa_inverse_hvp(model, cross_entropy_loss, remain, v, damping=0.01, scale=8.0, depth=7), rtol=1e-6
    )


def test_convention_errors(tiny):
    model, remain, forget = tiny
    kw = dict(n_train=N_TRAIN, damping=0.1, scale=10.0, depth=2)
    with pytest.raises(ValueError, match="removal must be one of"):
        influence_unlearn(model, cross_entropy_loss, remain, forget, removal="total", **kw)
    with pytest.raises(ValueError, match="damping_convention must be one of"):
        influence_unlearn(model, cross_entropy_loss, remain, forget, damping_convention="koh", **kw)


def test_config_knobs_and_cache_key():
    from healing_pl.phases.config import UnlearnConfig

    default = UnlearnConfig(method="influence")
    assert (default.removal, default.damping_convention) == ("mean", "additive")
    keys = {
        tuple(sorted(UnlearnConfig(method="influence", removal=r, damping_convention=c).hyperparameters().items()))
        for r in ("mean", "sum", "batch")
        for c in ("additive", "koh_liang")
    }
    assert len(keys) == 6  # the cache never returns a result computed with another convention
    assert "removal" not in UnlearnConfig(method="fisher").hyperparameters()
    with pytest.raises(ValueError, match=r"^unlearn\.removal must be one of mean, sum, batch, got 'all'\.$"):
        UnlearnConfig(method="influence", removal="all")
    with pytest.raises(ValueError, match=r"^unlearn\.damping_convention must be one of additive, koh_liang"):
        UnlearnConfig(method="influence", damping_convention="multiplicative")
