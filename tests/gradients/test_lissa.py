"""LiSSA and Hessian-vector products against explicit Hessians: logistic regression, a tiny MLP, dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from healing_pl.gradients.lissa import cross_entropy_loss, hessian_vector_product, lissa_inverse_hvp
from tests.gradients.shared import (
    DAMPING,
    depth_for,
    flat_params,
    hessian,
    load_digits64,
    make_model,
    tiny_mlp,
    train_logistic,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits64()


@pytest.fixture(scope="module")
def trained(digits):
    """Logistic regression trained a little (not to convergence) on all of digits."""
    return train_logistic(*digits)


@pytest.fixture(scope="module")
def tiny():
    return tiny_mlp()


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
# damping conventions
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# device and precision: the model's dtype wins over the loader's
# --------------------------------------------------------------------------


def test_lissa_float64_cnn_float32_loader(digits):
    """A CNN converted to float64 fed float32 batches and a float32 vector: LiSSA runs in float64."""
    x, y = digits
    images = x.float().reshape(-1, 1, 8, 8)[:160]
    labels = y[:160]
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).double()
    start = flat_params(model)
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
