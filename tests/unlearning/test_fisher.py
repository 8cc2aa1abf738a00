"""fisher_forget's noise and Newton step (the diagonal Fisher itself: tests/gradients/test_fisher.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from healing_pl.gradients.fisher import diagonal_fisher
from healing_pl.unlearning.fisher import fisher_forget
from tests.gradients.shared import ConvNet, batches, conv_data

# --------------------------------------------------------------------------
# fisher_forget
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_mlp():
    """A small MLP trained briefly on sklearn digits (pixels scaled to [0, 1])."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:600] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[:600])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    remain = batches(x[:500], y[:500], 125)
    forget = batches(x[500:], y[500:], 50)
    return model, remain, forget


def flat_delta(new: nn.Module, old: nn.Module) -> torch.Tensor:
    return torch.cat([(a - b).reshape(-1) for a, b in zip(new.parameters(), old.parameters())])


def test_fisher_forget_noise_statistics(digits_mlp):
    model, remain, _ = digits_mlp
    alpha = 1e-6
    fisher = diagonal_fisher(model, remain, "true")
    var = torch.cat([alpha * torch.clamp(1 / (f + 1e-8), max=1e3).reshape(-1) for f in fisher.values()])
    # digits has pixels that are always 0: their weights have zero Fisher, so
    # the clamp sets their variance to alpha * 1e3 (clamp first, then scale)
    assert bool((var == alpha * 1e3).any())
    new = fisher_forget(model, remain, alpha=alpha, shaping="plain", seed=0)  # golatkar: test_fisher_shaping.py
    z = flat_delta(new, model) / var.sqrt()
    assert z.numel() > 3000
    assert abs(float(z.mean())) < 0.06
    assert abs(float(z.var()) - 1.0) < 0.07  # std of a sample variance ~ sqrt(2/n)
    assert abs(float((z.abs() < 1).float().mean()) - 0.6827) < 0.03  # Gaussian, not just scaled


def test_fisher_forget_seed_and_input(digits_mlp):
    model, remain, _ = digits_mlp
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = fisher_forget(model, remain, alpha=1e-6, kind="empirical", seed=3)
    b = fisher_forget(model, remain, alpha=1e-6, kind="empirical", seed=3)
    c = fisher_forget(model, remain, alpha=1e-6, kind="empirical", seed=4)
    assert a is not model
    assert torch.equal(flat_delta(a, model), flat_delta(b, model))
    assert not torch.allclose(flat_delta(a, model), flat_delta(c, model))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_fisher_forget_max_norm(digits_mlp):
    model, remain, forget = digits_mlp
    free = flat_delta(fisher_forget(model, remain, alpha=1e-6, seed=1), model).norm()
    clipped = fisher_forget(model, remain, alpha=1e-6, seed=1, max_norm=float(free) / 4)
    assert math.isclose(float(flat_delta(clipped, model).norm()), float(free) / 4, rel_tol=1e-4)
    roomy = fisher_forget(model, remain, alpha=1e-6, seed=1, max_norm=float(free) * 2)
    unclipped = fisher_forget(model, remain, alpha=1e-6, seed=1)
    assert torch.allclose(flat_delta(roomy, model), flat_delta(unclipped, model))
    newton = fisher_forget(model, remain, forget, alpha=1e-6, noise_only=False, lam=1e-4, max_norm=0.01)
    assert float(flat_delta(newton, model).norm()) <= 0.01 * (1 + 1e-5)


def test_fisher_forget_newton_step(digits_mlp):
    model, remain, forget = digits_mlp
    lam = 1e-2
    new = fisher_forget(model, remain, forget, alpha=0.0, noise_only=False, lam=lam)
    fisher = diagonal_fisher(model, remain, "true")
    params = list(model.parameters())
    grads = [torch.zeros_like(p) for p in params]
    for x, y in forget:
        for g, gi in zip(grads, torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), params)):
            g += gi
    n_remain = sum(len(y) for _, y in remain)
    want = torch.cat([(g / n_remain / (f + lam)).reshape(-1) for g, f in zip(grads, fisher.values())])
    assert torch.allclose(flat_delta(new, model), want, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="forget_loader"):
        fisher_forget(model, remain, alpha=0.0, noise_only=False)


def test_fisher_forget_non_finite_raises(digits_mlp):
    model, remain, forget = digits_mlp
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="alpha is too large"):
        fisher_forget(model, remain, alpha=float("inf"))
    # lam = 0: the weights of always-zero pixels have F = 0 and 0/0 = NaN
    with pytest.raises(ValueError, match="lam is too small"):
        fisher_forget(model, remain, forget, alpha=0.0, noise_only=False, lam=0.0)
    with pytest.raises(ValueError, match="alpha"):
        fisher_forget(model, remain, alpha=-1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------
# device and precision: the model's dtype wins over the loader's
# --------------------------------------------------------------------------


def test_fisher_forget_float64_model_float32_loaders():
    torch.manual_seed(6)
    model = ConvNet().double()
    x, y = conv_data(12)
    kw = dict(alpha=1e-8, noise_only=False, lam=1e-2, seed=0)
    new = fisher_forget(
        model,
        DataLoader(TensorDataset(x[:8], y[:8]), batch_size=4),
        DataLoader(TensorDataset(x[8:], y[8:]), batch_size=4),
        **kw,
    )
    assert all(p.dtype == torch.float64 for p in new.parameters())
    assert all(b.dtype == model.bn.running_mean.dtype for b in new.buffers() if b.is_floating_point())
    # the same update as with the data already in float64
    want = fisher_forget(model, batches(x[:8].double(), y[:8], 4), batches(x[8:].double(), y[8:], 4), **kw)
    delta = flat_delta(new, model)
    assert float(delta.norm()) > 0
    torch.testing.assert_close(delta, flat_delta(want, model), rtol=1e-10, atol=1e-14)
