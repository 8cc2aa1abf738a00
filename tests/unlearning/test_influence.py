"""Influence unlearning against explicit Hessians on logistic regression (LiSSA: tests/gradients/test_lissa.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from healing_pl.gradients.lissa import cross_entropy_loss
from healing_pl.unlearning.influence import influence_unlearn
from tests.gradients.shared import (
    DAMPING,
    depth_for,
    flat_params,
    hessian,
    load_digits64,
    loss_at,
    make_model,
    train_logistic,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits64()


@pytest.fixture(scope="module")
def trained(digits):
    """Logistic regression trained a little (not to convergence) on all of digits."""
    return train_logistic(*digits)


# --------------------------------------------------------------------------
# influence_unlearn
# --------------------------------------------------------------------------


def test_influence_matches_explicit_formula(digits, trained):
    """Two forget batches, each removed at the current parameters."""
    x, y = digits
    state, _, top = trained
    model = make_model(state)
    remain = (x[100:], y[100:])
    forget = [(x[:40], y[:40]), (x[40:100], y[40:100])]
    n_train = x.shape[0]
    scale = top + DAMPING
    new = influence_unlearn(
        model,
        cross_entropy_loss,
        [remain],
        forget,
        n_train=n_train,
        damping=DAMPING,
        scale=scale,
        depth=depth_for(scale, DAMPING, 1e-4),
    )
    theta = flat_params(model)
    for fx, fy in forget:
        g = torch.autograd.functional.jacobian(lambda t: loss_at(t, fx, fy) * len(fy), theta)
        h = hessian(theta, *remain)
        theta = theta + torch.linalg.solve(h + DAMPING * torch.eye(650, dtype=h.dtype), g) / n_train
    got, want, start = flat_params(new), theta, flat_params(model)
    assert float((got - want).norm() / (want - start).norm()) < 0.02
    assert torch.equal(flat_params(model), start)  # the input is untouched


def test_influence_moves_toward_retrained_optimum(digits):
    """L2-regularised (strongly convex) logistic regression: one influence step
    lands much closer to the model retrained without the forget set."""
    x, y = digits
    x, y = x[:600], y[:600]
    wd = 5e-2
    forget_idx = torch.nonzero(y == 3).flatten()[:30]  # a class-targeted request
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[forget_idx] = False

    def fit(xs, ys, start):
        theta = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [theta], lr=1, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-15, line_search_fn="strong_wolfe"
        )

        def closure():
            opt.zero_grad()
            loss = loss_at(theta, xs, ys, wd)
            loss.backward()
            return loss

        opt.step(closure)
        return theta.detach()

    theta_full = fit(x, y, torch.zeros(650, dtype=torch.float64))
    theta_gold = fit(x[keep], y[keep], theta_full)
    model = make_model()
    with torch.no_grad():
        model.weight.copy_(theta_full[:640].view(10, 64))
        model.bias.copy_(theta_full[640:])

    def loss_fn(m, batch):  # the regulariser is part of every sample's loss
        return F.cross_entropy(m(batch[0]), batch[1]) + 0.5 * wd * sum(p.square().sum() for p in m.parameters())

    remain = [(x[keep], y[keep])]
    top = float(torch.linalg.eigvalsh(hessian(theta_full, *remain[0], wd)).max())
    n_remain = int(keep.sum())
    new = influence_unlearn(
        model,
        loss_fn,
        remain,
        [(x[forget_idx], y[forget_idx])],
        n_train=n_remain,
        damping=0.0,
        scale=top,
        depth=depth_for(top, wd, 1e-4),
    )
    before = float((theta_full - theta_gold).norm())
    after = float((flat_params(new) - theta_gold).norm())
    assert after < 0.1 * before


def test_influence_max_norm_and_divergence(digits, trained):
    x, y = digits
    state, _, top = trained
    model = make_model(state)
    start = flat_params(model).clone()
    forget = [(x[:30], y[:30]), (x[30:60], y[30:60])]
    kw = dict(n_train=x.shape[0], damping=DAMPING, scale=top + DAMPING, depth=50)
    free = influence_unlearn(model, cross_entropy_loss, [(x[60:], y[60:])], forget[:1], **kw)
    step = float((flat_params(free) - start).norm())
    clipped = influence_unlearn(model, cross_entropy_loss, [(x[60:], y[60:])], forget[:1], max_norm=step / 3, **kw)
    assert math.isclose(float((flat_params(clipped) - start).norm()), step / 3, rel_tol=1e-6)
    two = influence_unlearn(model, cross_entropy_loss, [(x[60:], y[60:])], forget, max_norm=step / 3, **kw)
    assert float((flat_params(two) - start).norm()) <= 2 * step / 3 * (1 + 1e-9)  # per batch
    kw["scale"] = 0.2 * top
    with pytest.raises(ValueError, match="raise scale.*or damping"):
        influence_unlearn(model, cross_entropy_loss, [(x[60:], y[60:])], forget, **kw)
    assert torch.equal(flat_params(model), start)
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------
# device and precision: the model's dtype wins over the loader's
# --------------------------------------------------------------------------


def test_influence_float64_cnn_float32_loaders(digits):
    """A CNN converted to float64 fed float32 batches: the update runs in float64 (LiSSA: tests/gradients)."""
    x, y = digits
    images = x.float().reshape(-1, 1, 8, 8)[:160]
    labels = y[:160]
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).double()
    kw = dict(n_train=160, damping=DAMPING, scale=20.0, depth=4)
    new = influence_unlearn(
        model,
        cross_entropy_loss,
        DataLoader(TensorDataset(images[40:], labels[40:]), batch_size=60),
        DataLoader(TensorDataset(images[:40], labels[:40]), batch_size=20),
        **kw,
    )
    assert all(p.dtype == torch.float64 for p in new.parameters())
    want = influence_unlearn(
        model,
        cross_entropy_loss,
        [(images[40:100].double(), labels[40:100]), (images[100:].double(), labels[100:])],
        [(images[:20].double(), labels[:20]), (images[20:40].double(), labels[20:40])],
        **kw,
    )
    start = flat_params(model)
    assert float((flat_params(new) - start).norm()) > 0
    torch.testing.assert_close(flat_params(new), flat_params(want), rtol=1e-12, atol=1e-14)
