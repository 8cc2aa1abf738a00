"""The paper's Fisher recipe: its noise forms against their formulas, the Fisher estimators against loops, and the
Newton step plus noise per forget batch against an explicit sequential loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from healing_pl.gradients.fisher import diagonal_fisher
from healing_pl.unlearning.fisher import fisher_forget, noise_std, noise_variance

CLASSES = 3


@pytest.fixture(scope="module")
def toy():
    """A float64 conv + MLP on 3 classes, briefly trained; 24 remain (batches of 8) and 6 forget (batches of 4, 2)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 1, 5, 5, generator=gen, dtype=torch.float64)
    x[:, :, 0, :] = 0.0  # always-zero pixels: zero Fisher on some conv weights, where eps matters
    y = torch.randint(0, CLASSES, (30,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 5), nn.Tanh(), nn.Linear(5, CLASSES)
    ).double()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    remain = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)]
    forget = [(x[24:28], y[24:28]), (x[28:], y[28:])]
    return model, remain, forget


def _grads(model, x, y):
    return torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))


def _loop_fisher(model, batches, kind):
    """The Fisher by its definition: a loop over samples (true, empirical) or over batches (batch_mean)."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    count = 0
    for x, y in batches:
        if kind == "batch_mean":
            for t, g in zip(total, _grads(model, x, y)):
                t += g.square()
            count += 1
            continue
        for i in range(len(y)):
            xi = x[i : i + 1]
            if kind == "empirical":
                terms = [(1.0, y[i : i + 1])]
            else:
                p = F.softmax(model(xi), -1)[0].detach()
                terms = [(float(p[c]), torch.tensor([c])) for c in range(CLASSES)]
            for w, label in terms:
                for t, g in zip(total, _grads(model, xi, label)):
                    t += w * g.square()
            count += 1
    return [t / count for t in total]


@pytest.mark.parametrize("kind", ["true", "empirical", "batch_mean"])
def test_each_fisher_estimator_equals_its_loop(toy, kind):
    model, remain, _ = toy
    got = diagonal_fisher(model, remain, kind)
    want = _loop_fisher(model, remain, kind)
    for (name, _), w in zip(model.named_parameters(), want):
        assert torch.allclose(got[name], w, rtol=1e-10, atol=1e-14), name
    assert float(sum(w.sum() for w in want)) > 0


def test_batch_mean_depends_on_the_batch_size(toy):
    """One batch of everything gives the squared mean gradient, not the per-sample Fisher."""
    model, remain, _ = toy
    x, y = torch.cat([b[0] for b in remain]), torch.cat([b[1] for b in remain])
    got = diagonal_fisher(model, [(x, y)], "batch_mean")
    for (name, _), g in zip(model.named_parameters(), _grads(model, x, y)):
        assert torch.allclose(got[name], g.square(), rtol=1e-12, atol=0)
    assert not torch.allclose(got["0.weight"], diagonal_fisher(model, remain, "batch_mean")["0.weight"])


def test_noise_std_formulas():
    f = torch.tensor([0.0, 1e-6, 0.5, 16.0], dtype=torch.float64)
    a, eps, lam, sigma = 3.5e-3, 1e-6, 1e-6, 0.2
    assert torch.equal(noise_std(f, a, "paper", eps=eps), a * (f + eps) ** -0.25)
    assert torch.allclose(noise_std(f, a, "paper", eps=0.0)[2:], a * torch.tensor([0.5**-0.25, 0.5]).double())
    want = (lam * sigma**2) ** 0.25 * (f + eps) ** -0.25
    assert torch.allclose(noise_std(f, a, "paper_lambda", eps=eps, lam=lam, sigma_h=sigma), want, rtol=1e-15)
    by_alpha = noise_std(f, sigma, "paper_lambda", eps=eps, lam=lam)  # sigma_h defaults to alpha
    assert torch.allclose(by_alpha, want, rtol=1e-15)
    assert torch.equal(noise_std(f, a, "plain"), noise_variance(f, a, "plain").sqrt())
    with pytest.raises(ValueError, match="shaping must be one of"):
        noise_std(f, a, "paper2")


def _flat(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("shaping", ["paper", "paper_lambda"])
@pytest.mark.parametrize("kind", ["true", "batch_mean"])
def test_paper_noise_equals_its_formula_tensor_for_tensor(toy, shaping, kind):
    """Noise only: theta + std(F_R) * N(0, 1), drawn from a generator seeded with the seed, in parameter order."""
    model, remain, _ = toy
    alpha, eps, lam, seed = 3.5e-3, 1e-6, 1e-4, 7
    new = fisher_forget(model, remain, alpha=alpha, kind=kind, shaping=shaping, eps=eps, lam=lam, seed=seed)
    fisher = _loop_fisher(model, remain, kind)
    gen = torch.Generator().manual_seed(seed)
    scale = alpha if shaping == "paper" else (lam * alpha**2) ** 0.25
    for p0, p1, f in zip(_flat(model), _flat(new), fisher):
        want = p0 + scale * (f + eps) ** -0.25 * torch.randn(p0.shape, generator=gen, dtype=p0.dtype)
        assert torch.allclose(p1, want, rtol=1e-12, atol=1e-12)
    assert max(float((a - b).abs().max()) for a, b in zip(_flat(model), _flat(new))) > 1e-3


def test_newton_step_and_noise_per_forget_batch(toy):
    """per_batch: for each forget batch, at the current weights, theta += (F_R + lam)^-1 (1/|R|) sum_B grad + noise."""
    model, remain, forget = toy
    alpha, eps, lam, seed = 1e-3, 1e-6, 1e-2, 3
    new = fisher_forget(
        model, remain, forget, alpha=alpha, kind="empirical", lam=lam, noise_only=False, shaping="paper",
        eps=eps, seed=seed, per_batch=True,
    )  # fmt: skip
    cur = __import__("copy").deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for x, y in forget:
        fisher = _loop_fisher(cur, remain, "empirical")
        g = torch.autograd.grad(F.cross_entropy(cur(x), y, reduction="sum"), list(cur.parameters()))
        with torch.no_grad():
            for p, f, gi in zip(cur.parameters(), fisher, g):
                noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                p += gi / 24 / (f + lam) + alpha * (f + eps) ** -0.25 * noise
    for got, want in zip(_flat(new), _flat(cur)):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    one = fisher_forget(
        model, remain, forget, alpha=alpha, kind="empirical", lam=lam, noise_only=False, shaping="paper",
        eps=eps, seed=seed,
    )  # fmt: skip
    assert any(not torch.allclose(a, b) for a, b in zip(_flat(one), _flat(new)))  # one step over all of F differs


def test_paper_knobs_on_the_method():
    from healing_pl.unlearning import UNLEARNERS

    fisher = UNLEARNERS["fisher"]
    hp = fisher(shaping="paper", fisher_kind="batch_mean", per_batch=True).hyperparameters()
    assert (hp["shaping"], hp["fisher_kind"], hp["per_batch"], hp["eps"]) == ("paper", "batch_mean", True, 1e-6)
    with pytest.raises(ValueError, match=r"^unlearn\.shaping must be one of golatkar, plain, paper, paper_lambda"):
        fisher(shaping="quartic")
    with pytest.raises(ValueError, match=r"^unlearn\.fisher_kind must be one of true, empirical, batch_mean"):
        fisher(fisher_kind="sampled")
    with pytest.raises(ValueError, match=r"^unlearn\.eps must be non-negative"):
        fisher(eps=-1.0)
