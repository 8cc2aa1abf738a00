"""The Golatkar shaping of the Fisher noise against a transcription of the published formula; plain unchanged."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from healing_pl.gradients.fisher import diagonal_fisher
from healing_pl.unlearning.fisher import fisher_forget, noise_variance

CLASSES = 5


class ToyNet(nn.Module):
    """Conv (5 = CLASSES output channels, so the published rule counts it as a classifier layer too),
    BatchNorm (1-D parameters), a hidden Linear and the head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, CLASSES, 3)  # 6x6 -> 4x4
        self.bn = nn.BatchNorm2d(CLASSES)
        self.hidden = nn.Linear(CLASSES * 16, 8)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.head(torch.tanh(self.hidden(x.flatten(1))))


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 6, 6)
    x[:, :, 0, :] = 0.0  # a row of always-zero pixels: zero Fisher for some weights, the clamps bind
    y = torch.randint(0, CLASSES, (64,))
    model = ToyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():  # a dead hidden unit: zero Fisher on its head column, the classifier clamp binds
        model.hidden.weight[0] = 0.0
        model.hidden.bias[0] = 0.0
    model.zero_grad(set_to_none=True)
    model.eval()  # running statistics (the Fisher is computed in eval mode anyway)
    return model, DataLoader(TensorDataset(x, y), batch_size=16)


# A line-by-line transcription of get_mean_var (AdityaGolatkar/SelectiveForgetting, main.ipynb), with
# deepcopy, p.grad2_acc and p.data0 as there; the class-forgetting branch (mu[forget_class] = 0) is left out
# because it forgets a class, not samples.
def published_get_mean_var(p, num_classes, alpha):
    var = deepcopy(1.0 / (p.grad2_acc + 1e-8))
    var = var.clamp(max=1e3)
    if p.size(0) == num_classes:
        var = var.clamp(max=1e2)
    var = alpha * var

    if p.ndim > 1:
        var = var.mean(dim=1, keepdim=True).expand_as(p).clone()
    mu = deepcopy(p.data0.clone())
    if p.size(0) == num_classes:
        # Last layer
        var *= 10
    elif p.ndim == 1:
        # BatchNorm
        var *= 10
    return mu, var


def published_forget(model, fisher, alpha, seed):
    """The published scrubbing loop, with a seeded generator for the noise."""
    model = deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    variances = {}
    for name, p in model.named_parameters():
        p.grad2_acc = fisher[name]
        p.data0 = deepcopy(p.data.clone())
    for name, p in model.named_parameters():
        mu, var = published_get_mean_var(p, CLASSES, alpha)
        p.data = mu + var.sqrt() * torch.empty_like(p.data0).normal_(generator=gen)
        variances[name] = var
    return model, variances


@pytest.mark.parametrize("alpha", [1e-6, 3.5e-3])
def test_golatkar_variance_equals_published_formula(toy, alpha):
    model, loader = toy
    fisher = diagonal_fisher(model, loader, "true")
    _, want = published_forget(model, fisher, alpha, seed=0)
    for name, p in model.named_parameters():
        got = noise_variance(fisher[name], alpha, "golatkar", CLASSES)
        assert got.shape == p.shape
        assert torch.equal(got, want[name]), name


@pytest.mark.parametrize("seed", [0, 7])
def test_golatkar_noised_weights_equal_published_loop(toy, seed):
    model, loader = toy
    alpha = 3.5e-6
    fisher = diagonal_fisher(model, loader, "true")
    want, _ = published_forget(model, fisher, alpha, seed)
    got = fisher_forget(model, loader, alpha=alpha, shaping="golatkar", num_classes=CLASSES, seed=seed)
    inferred = fisher_forget(model, loader, alpha=alpha, seed=seed)  # golatkar by default, classes from the logits
    for (name, a), b, c in zip(got.named_parameters(), want.parameters(), inferred.parameters(), strict=True):
        assert torch.equal(a, b), name
        assert torch.equal(c, b), name
    for a, b in zip(got.buffers(), model.buffers(), strict=True):
        assert torch.equal(a, b)  # BatchNorm statistics untouched


def test_golatkar_branches_all_bind(toy):
    """The transcription test is not vacuous: each rule changes something on the toy model."""
    model, loader = toy
    fisher = diagonal_fisher(model, loader, "true")
    alpha = 1.0
    head = fisher["head.weight"]
    # the classifier clamp binds: some head inverse-Fisher entries exceed 1e2
    assert bool((torch.clamp(1 / (head + 1e-8), max=1e3) > 1e2).any())
    for name in ("conv.weight", "hidden.weight", "head.weight"):
        golatkar = noise_variance(fisher[name], alpha, "golatkar", CLASSES)
        # constant along dimension 1
        assert torch.equal(golatkar, golatkar[:, :1].expand_as(golatkar))
        assert not torch.equal(golatkar, noise_variance(fisher[name], alpha, "plain"))
    # x10 on the 1-D parameters and the classifier layer, not on the hidden layer
    bn = fisher["bn.weight"]
    assert torch.equal(noise_variance(bn, alpha, "golatkar", None), 10 * torch.clamp(1 / (bn + 1e-8), max=1e3))
    hidden = fisher["hidden.weight"]
    plain_mean = torch.clamp(1 / (hidden + 1e-8), max=1e3).mean(1, keepdim=True).expand_as(hidden)
    assert torch.equal(noise_variance(hidden, alpha, "golatkar", CLASSES), plain_mean)


def test_golatkar_hand_computed():
    # a (2 classes x 3 inputs) head and its bias; inverse Fishers 1e3 (clamped from 1e8), 10, 4
    fisher = torch.tensor([[0.0, 0.1, 0.25], [1.0, 0.5, 0.2]])
    want = 2.0 * 10 * torch.tensor([[(100 + 1 / (0.1 + 1e-8) + 1 / (0.25 + 1e-8)) / 3] * 3, [(1 + 2 + 5) / 3] * 3])
    got = noise_variance(fisher, 2.0, "golatkar", num_classes=2)
    assert torch.allclose(got, want, rtol=1e-6)
    bias = torch.tensor([0.0, 0.5])
    assert torch.allclose(noise_variance(bias, 2.0, "golatkar", 2), torch.tensor([2e3, 40.0]), rtol=1e-6)
    # not a classifier (first dimension 3 != 2 classes): no 1e2 clamp, no x10
    assert torch.allclose(
        noise_variance(fisher.T, 2.0, "golatkar", 2), 2.0 * torch.tensor([[(1e3 + 1) / 2] * 2, [6.0] * 2, [4.5] * 2])
    )


def test_plain_is_unchanged(toy):
    model, loader = toy
    alpha = 1e-6
    fisher = diagonal_fisher(model, loader, "true")
    got = fisher_forget(model, loader, alpha=alpha, shaping="plain", seed=3)
    gen = torch.Generator().manual_seed(3)
    for (name, p), q in zip(model.named_parameters(), got.parameters(), strict=True):
        var = alpha * torch.clamp(1.0 / (fisher[name] + 1e-8), max=1e3)
        assert torch.equal(noise_variance(fisher[name], alpha, "plain", CLASSES), var)
        assert torch.equal(q, p + var.sqrt() * torch.randn(p.shape, generator=gen)), name


def test_newton_step_plus_shaped_noise(toy):
    """noise_only=False: the diagonal Newton step, then the golatkar noise (same generator draws)."""
    model, loader = toy
    alpha, lam = 1e-6, 1e-2
    forget = DataLoader(TensorDataset(*[t[:8] for t in loader.dataset.tensors]), batch_size=3)
    step = fisher_forget(model, loader, forget, alpha=0.0, noise_only=False, lam=lam)
    noise = fisher_forget(model, loader, alpha=alpha, seed=2)
    both = fisher_forget(model, loader, forget, alpha=alpha, noise_only=False, lam=lam, seed=2)
    for p, s, n, b in zip(model.parameters(), step.parameters(), noise.parameters(), both.parameters(), strict=True):
        assert torch.allclose(b - p, (s - p) + (n - p), atol=1e-6)
    # batch_f does not change the step
    forget_one = DataLoader(forget.dataset, batch_size=8)
    again = fisher_forget(model, loader, forget_one, alpha=0.0, noise_only=False, lam=lam)
    for a, b in zip(step.parameters(), again.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def test_shaping_errors(toy):
    model, loader = toy
    with pytest.raises(ValueError, match="shaping"):
        fisher_forget(model, loader, alpha=1e-6, shaping="golatker")
    with pytest.raises(ValueError, match="shaping"):
        noise_variance(torch.ones(3), 1e-6, "Golatkar")


def test_config_knob_and_cache_key():
    from healing_pl.unlearning import UNLEARNERS

    golatkar = UNLEARNERS["fisher"]()
    assert golatkar.shaping == "golatkar"
    plain = UNLEARNERS["fisher"](shaping="plain")
    assert golatkar.hyperparameters()["shaping"] == "golatkar"
    assert golatkar.hyperparameters() != plain.hyperparameters()


def test_config_refuses_an_unknown_shaping():
    from healing_pl.unlearning import UNLEARNERS

    want = r"^unlearn\.shaping must be one of golatkar, plain, paper, paper_lambda, got 'gaussian'\.$"
    with pytest.raises(ValueError, match=want):
        UNLEARNERS["fisher"](shaping="gaussian")
