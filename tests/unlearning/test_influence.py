"""LiSSA and influence unlearning against explicit Hessians on logistic regression."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from healing_pl.unlearning.influence import (
    cross_entropy_loss,
    hessian_vector_product,
    influence_unlearn,
    lissa_inverse_hvp,
)

DAMPING = 0.05


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float64), torch.tensor(y)


def make_model(state=None) -> nn.Module:
    model = nn.Linear(64, 10).double()
    if state is not None:
        model.load_state_dict(state)
    return model


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def loss_at(flat: torch.Tensor, x, y, wd: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy (+ wd/2 |theta|^2) of the linear model with parameters ``flat``."""
    w, b = flat[:640].view(10, 64), flat[640:]
    return F.cross_entropy(x @ w.T + b, y) + 0.5 * wd * flat.square().sum()


def hessian(flat, x, y, wd: float = 0.0) -> torch.Tensor:
    return torch.autograd.functional.hessian(lambda t: loss_at(t, x, y, wd), flat, vectorize=True)


@pytest.fixture(scope="module")
def trained(digits):
    """Logistic regression trained a little (not to convergence) on all of digits."""
    x, y = digits
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    h = hessian(flat_params(model), x, y)
    return state, h, float(torch.linalg.eigvalsh(h).max())


def depth_for(scale: float, damping: float, tol: float) -> int:
    """Steps for the slowest mode (eigenvalue ``damping``) to shrink below ``tol``."""
    return math.ceil(math.log(tol) / math.log(1 - damping / scale))


# --------------------------------------------------------------------------
# LiSSA
# --------------------------------------------------------------------------


def test_lissa_matches_explicit_inverse(digits, trained):
    x, y = digits
    state, h, top = trained
    model = make_model(state)
    v = torch.randn(650, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = torch.linalg.solve(h + DAMPING * torch.eye(650, dtype=h.dtype), v)
    scale = top + DAMPING  # above half the top eigenvalue of H + dI
    est = lissa_inverse_hvp(
        model, cross_entropy_loss, [(x, y)], v, damping=DAMPING, scale=scale, depth=depth_for(scale, DAMPING, 1e-3)
    )
    assert float((est - exact).norm() / exact.norm()) < 0.02


def test_lissa_minibatches_cycle(digits, trained):
    """With minibatch Hessians the estimate still approaches the full-data one."""
    x, y = digits
    state, h, top = trained
    model = make_model(state)
    v = torch.randn(650, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = torch.linalg.solve(h + DAMPING * torch.eye(650, dtype=h.dtype), v)
    loader = DataLoader(TensorDataset(x, y), batch_size=600)  # 3 batches, cycled many times
    scale = 2 * top
    est = lissa_inverse_hvp(
        model, cross_entropy_loss, loader, v, damping=DAMPING, scale=scale, depth=depth_for(scale, DAMPING, 1e-3)
    )
    assert float((est - exact).norm() / exact.norm()) < 0.1


def test_lissa_divides_by_scale_and_averages_repeats(digits, trained):
    x, y = digits
    state, h, top = trained
    model = make_model(state)
    v = torch.randn(650, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = 3.0
    kw = dict(damping=DAMPING, scale=s)
    # depth 0: h_0 = v, returned divided by the scale
    assert torch.allclose(lissa_inverse_hvp(model, cross_entropy_loss, [(x, y)], v, depth=0, **kw), v / s)
    # depth 1: h_1 = v + v - (H v + d v) / s, returned as h_1 / s
    h1 = 2 * v - (h @ v + DAMPING * v) / s
    one = lissa_inverse_hvp(model, cross_entropy_loss, [(x, y)], v, depth=1, **kw)
    assert torch.allclose(one, h1 / s, rtol=1e-10, atol=1e-12)
    # repeats are averaged, not summed (the full-batch runs are identical)
    three = lissa_inverse_hvp(model, cross_entropy_loss, [(x, y)], v, depth=1, repeats=3, **kw)
    assert torch.allclose(three, one, rtol=1e-10, atol=1e-12)
    hv = hessian_vector_product(model, cross_entropy_loss, (x, y), v)
    assert torch.allclose(hv, h @ v, rtol=1e-8, atol=1e-12)


def test_lissa_reuses_equal_batches_only(digits, trained):
    """A one-batch DataLoader yields new but equal tensors each pass: same
    result as a list holding one batch (whose gradient graph is reused)."""
    x, y = digits
    state, _, top = trained
    model = make_model(state)
    v = torch.randn(650, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    kw = dict(damping=DAMPING, scale=top + DAMPING, depth=20)
    listed = lissa_inverse_hvp(model, cross_entropy_loss, [(x, y)], v, **kw)
    loaded = lissa_inverse_hvp(model, cross_entropy_loss, DataLoader(TensorDataset(x, y), batch_size=len(y)), v, **kw)
    assert torch.allclose(listed, loaded, rtol=1e-10, atol=1e-12)
    halves = [(x[:900], y[:900]), (x[900:], y[900:])]
    alternating = lissa_inverse_hvp(model, cross_entropy_loss, halves, v, **kw)
    h = [hessian(flat_params(model), *half) for half in halves]
    want = v.clone()
    for j in range(20):
        hj = h[j % 2]
        want = v + want - (hj @ want + DAMPING * want) / kw["scale"]
    assert torch.allclose(alternating, want / kw["scale"], rtol=1e-8, atol=1e-10)


def test_lissa_diverges_with_too_small_scale(digits, trained):
    x, y = digits
    state, _, top = trained
    model = make_model(state)
    v = torch.randn(650, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.raises(ValueError, match="raise scale"):
        lissa_inverse_hvp(model, cross_entropy_loss, [(x, y)], v, damping=DAMPING, scale=0.3 * top, depth=500)


def test_lissa_leaves_model_untouched(digits, trained):
    x, y = digits
    state, _, top = trained
    model = make_model(state).train()
    model.bias.grad = torch.ones(10, dtype=torch.float64)
    before = flat_params(model).clone()
    v = torch.randn(650, dtype=torch.float64)
    lissa_inverse_hvp(model, cross_entropy_loss, [(x[:100], y[:100])], v, damping=DAMPING, scale=top + 1, depth=5)
    assert torch.equal(flat_params(model), before)
    assert model.weight.grad is None
    assert torch.equal(model.bias.grad, torch.ones(10, dtype=torch.float64))
    assert model.training


def test_lissa_argument_errors(digits, trained):
    x, y = digits
    model = make_model(trained[0])
    v = torch.zeros(650, dtype=torch.float64)
    with pytest.raises(ValueError, match="entries"):
        lissa_inverse_hvp(model, cross_entropy_loss, [(x, y)], torch.zeros(5), damping=0.1, scale=1.0, depth=1)
    with pytest.raises(ValueError, match="scale"):
        lissa_inverse_hvp(model, cross_entropy_loss, [(x, y)], v, damping=0.1, scale=0.0, depth=1)
    with pytest.raises(ValueError, match="damping"):
        lissa_inverse_hvp(model, cross_entropy_loss, [(x, y)], v, damping=-1.0, scale=1.0, depth=1)
    with pytest.raises(ValueError, match="no batches"):
        lissa_inverse_hvp(model, cross_entropy_loss, [], v, damping=0.1, scale=1.0, depth=1)


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
    """A CNN converted to float64 fed float32 batches: LiSSA and the update run in float64."""
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
    v = torch.randn(start.numel(), generator=torch.Generator().manual_seed(8))  # float32 vector
    est = lissa_inverse_hvp(
        model,
        cross_entropy_loss,
        DataLoader(TensorDataset(images, labels), batch_size=80),
        v,
        damping=DAMPING,
        scale=20.0,
        depth=3,
    )
    assert est.dtype == torch.float64
