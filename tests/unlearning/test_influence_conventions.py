"""Influence removal scalings (mean, sum, batch) and LiSSA damping conventions against an explicit Hessian inverse."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from healing_pl.gradients.lissa import cross_entropy_loss
from healing_pl.unlearning.influence import REMOVALS, influence_unlearn
from tests.gradients.shared import tiny_mlp

N_TRAIN = 46  # remain 40 + forget 6


@pytest.fixture(scope="module")
def tiny():
    """A 31-parameter tanh MLP on 3 classes, trained briefly in float64; 40 remain and 6 forget points."""
    return tiny_mlp()


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


def test_convention_errors(tiny):
    model, remain, forget = tiny
    kw = dict(n_train=N_TRAIN, damping=0.1, scale=10.0, depth=2)
    with pytest.raises(ValueError, match="removal must be one of"):
        influence_unlearn(model, cross_entropy_loss, remain, forget, removal="total", **kw)
    with pytest.raises(ValueError, match="damping_convention must be one of"):
        influence_unlearn(model, cross_entropy_loss, remain, forget, damping_convention="koh", **kw)


def test_config_knobs_and_cache_key():
    from healing_pl.unlearning import UNLEARNERS

    influence = UNLEARNERS["influence"]
    default = influence()
    assert (default.removal, default.damping_convention) == ("mean", "additive")
    keys = {
        tuple(sorted(influence(removal=r, damping_convention=c).hyperparameters().items()))
        for r in ("mean", "sum", "batch")
        for c in ("additive", "koh_liang")
    }
    assert len(keys) == 6  # the cache never returns a result computed with another convention
    assert "removal" not in UNLEARNERS["fisher"]().hyperparameters()


def test_config_refuses_an_unknown_removal_or_convention():
    from healing_pl.unlearning import UNLEARNERS

    influence = UNLEARNERS["influence"]
    with pytest.raises(ValueError, match=r"^unlearn\.removal must be one of mean, sum, batch, got 'all'\.$"):
        influence(removal="all")
    with pytest.raises(ValueError, match=r"^unlearn\.damping_convention must be one of additive, koh_liang"):
        influence(damping_convention="multiplicative")


# --------------------------------------------------------------------------
# the paper's fixed-length step
# --------------------------------------------------------------------------


def _explicit_fixed(model, remain, forget, d, max_norm):
    """The fixed-length path: theta += max_norm * u / |u|, u = (H_R(theta) + d I)^-1 sum_B grad(theta)."""
    theta = _flat(model).clone()
    path = [theta]
    for batch in forget:
        a = _hessian(model, theta, remain[0]) + d * torch.eye(theta.numel(), dtype=theta.dtype)
        u = torch.linalg.solve(a, _grad_sum(model, theta, batch))
        theta = theta + max_norm * u / u.norm()
        path.append(theta)
    return path


def test_fixed_step_moves_exactly_max_norm_along_the_explicit_inverse(tiny):
    """Each forget batch moves the weights by exactly max_norm, along (H_R + d I)^-1 g_B at the current point."""
    model, remain, forget = tiny
    d, max_norm = 0.05, 0.3
    for _ in range(5):  # damping that keeps H_R + d I positive definite at every point of the path
        path = _explicit_fixed(model, remain, forget, d, max_norm)
        eigs = torch.cat([torch.linalg.eigvalsh(_hessian(model, t, remain[0])) for t in path[:-1]])
        if float(eigs.min()) + d > 0.02:
            break
        d = -float(eigs.min()) + 0.05
    s = float(eigs.max()) + d + 1.0
    depth = int(math.log(1e-12) / math.log(1 - (float(eigs.min()) + d) / s)) + 1
    got = [_flat(model)]
    for k in range(1, len(forget) + 1):  # the forget set's first k batches, removed in turn
        new = influence_unlearn(
            model,
            cross_entropy_loss,
            remain,
            forget[:k],
            n_train=N_TRAIN,
            damping=d,
            scale=s,
            depth=depth,
            max_norm=max_norm,
            removal="mean",  # no effect on a fixed step: a positive factor keeps the direction
            step="fixed",
        )
        got.append(_flat(new))
    for k in range(1, len(got)):
        step = got[k] - got[k - 1]
        assert abs(float(step.norm()) - max_norm) < 1e-12 * max_norm
        want = path[k] - path[k - 1]
        assert torch.allclose(step, want, rtol=1e-8, atol=1e-9 * max_norm)


def test_fixed_step_follows_a_growing_lissa_iterate_where_the_newton_step_stops(tiny):
    """With scale below half the Hessian's top eigenvalue the LiSSA iterate grows (no inverse); the fixed step uses
    its direction anyway, as the paper's authors' code (no growth check): exactly max_norm along the explicit
    recursion h <- v + (1 - d) h - H h / s (koh_liang), which leans toward the top eigenvector. The Newton step,
    which uses the iterate's size, stops with the divergence sentence."""
    model, remain, forget = tiny
    theta = _flat(model)
    h_r = _hessian(model, theta, remain[0])
    top = float(torch.linalg.eigvalsh(h_r).max())
    d, s, depth, max_norm = 1e-4, top / 8, 12, 0.5  # |1 - d - top / s| = 7: the iterate grows ~7x per step
    v = _grad_sum(model, theta, forget[0])
    h = v.clone()
    for _ in range(depth):
        h = v + (1 - d) * h - h_r @ h / s
    assert float(h.norm()) > 1e6 * float(v.norm())  # grew far past the bounded recursion's limit
    kw = dict(n_train=N_TRAIN, damping=d, scale=s, depth=depth, max_norm=max_norm, damping_convention="koh_liang")
    new = influence_unlearn(model, cross_entropy_loss, remain[:1], forget[:1], step="fixed", **kw)
    step = _flat(new) - theta
    assert abs(float(step.norm()) - max_norm) < 1e-12
    assert torch.allclose(step, max_norm * h / h.norm(), rtol=1e-7, atol=1e-10)
    with pytest.raises(ValueError, match="LiSSA diverged at step"):
        influence_unlearn(model, cross_entropy_loss, remain[:1], forget[:1], step="newton", **kw)


def test_fixed_step_ignores_the_removal_scaling(tiny):
    model, remain, forget = tiny
    kw = dict(n_train=N_TRAIN, damping=0.5, scale=10.0, depth=30, max_norm=0.2, step="fixed")
    steps = [_flat(influence_unlearn(model, cross_entropy_loss, remain, forget, removal=r, **kw)) for r in REMOVALS]
    assert all(torch.allclose(s, steps[0], rtol=1e-12, atol=1e-14) for s in steps[1:])
    assert float((steps[0] - _flat(model)).norm()) > 0.2  # two batches moved it (not back to the start)


def test_fixed_step_needs_max_norm(tiny):
    from healing_pl.unlearning import UNLEARNERS

    model, remain, forget = tiny
    kw = dict(n_train=N_TRAIN, damping=0.1, scale=10.0, depth=2, step="fixed")
    with pytest.raises(ValueError, match="the fixed step needs max_norm"):
        influence_unlearn(model, cross_entropy_loss, remain, forget, **kw)
    with pytest.raises(ValueError, match="step must be one of"):
        influence_unlearn(model, cross_entropy_loss, remain, forget, **{**kw, "step": "long", "max_norm": 1.0})
    with pytest.raises(ValueError, match=r"^unlearn\.step fixed needs unlearn\.max_norm, [^.]*\.$"):
        UNLEARNERS["influence"](step="fixed")
    with pytest.raises(ValueError, match=r"^unlearn\.step must be one of newton, fixed"):
        UNLEARNERS["influence"](step="clipped", max_norm=1.0)
    fixed = UNLEARNERS["influence"](step="fixed", max_norm=1.0)
    newton = UNLEARNERS["influence"](max_norm=1.0)
    assert fixed.hyperparameters()["step"] == "fixed" and newton.hyperparameters()["step"] == "newton"
