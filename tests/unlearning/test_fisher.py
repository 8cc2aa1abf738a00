"""diagonal_fisher against a per-sample loop; fisher_forget's noise and Newton step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from healing_pl.unlearning.fisher import diagonal_fisher, fisher_forget

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def reference_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """The definition, one sample and one class at a time (model in eval mode)."""
    was_training = model.training
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    acc = [torch.zeros_like(p) for p in params]
    for i in range(x.shape[0]):
        logits = model(x[i : i + 1])
        prob = logits.softmax(-1).detach()[0]
        classes = range(logits.shape[1]) if kind == "true" else [int(y[i])]
        for c in classes:
            loss = F.cross_entropy(logits, torch.tensor([c]))
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            weight = prob[c] if kind == "true" else 1.0
            for a, g in zip(acc, grads):
                if g is not None:
                    a += weight * g.square()
    model.train(was_training)
    return {n: a / x.shape[0] for (n, _), a in zip(named, acc)}


def assert_fisher_close(got: dict, want: dict, rtol: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for name in want:
        scale = want[name].abs().max().clamp_min(1e-30)
        err = float((got[name] - want[name]).abs().max() / scale)
        assert err <= rtol, f"{name}: relative error {err:.2e}"


class ConvNet(nn.Module):
    """Every identity and each of their code paths.

    Conv2d layers on large maps (grouped-convolution path): strided with
    padding, depthwise with reflect padding, grouped + dilated with 'same'
    padding; on a small map (unfold path): grouped, strided with unused
    trailing rows; on a 2x2 map (position-pair path): grouped with circular
    padding.  GroupNorm, LayerNorm, BatchNorm2d/1d (eval mode).  Linear on
    tokens called twice (per-sample path), once (pair path), and a plain
    Linear head.  In-place ReLUs.  A PReLU, whose parameter takes the
    torch.func fallback."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)  # 24x24 -> 12x12
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect")
        self.gn = nn.GroupNorm(2, 4)
        self.grouped = nn.Conv2d(4, 6, 3, padding="same", groups=2, dilation=2)
        self.prelu = nn.PReLU(6)
        self.strided = nn.Conv2d(6, 6, 2, stride=3, groups=2, bias=False)  # 12 -> 4, row 11 unused
        self.small = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=3, padding_mode="circular")  # 4 -> 2
        self.norm = nn.LayerNorm([6, 2, 2])
        self.bn = nn.BatchNorm2d(6)
        self.token = nn.Linear(4, 4)
        self.token_once = nn.Linear(4, 4)
        self.bn1d = nn.BatchNorm1d(24)
        self.head = nn.Linear(24, classes)
        with torch.no_grad():
            for bn in (self.bn, self.bn1d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
            for norm in (self.gn, self.norm):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = F.relu(self.conv(x), inplace=True)
        x = self.gn(self.depthwise(x)).relu_()
        x = self.prelu(self.grouped(x))
        x = torch.tanh(self.strided(x))
        x = self.small(x)
        x = self.bn(self.norm(x))
        b = x.shape[0]
        t = x.reshape(b, 6, 4)
        t = self.token(t) + self.token(t.flip(1))
        t = self.token_once(torch.tanh(t))
        return self.head(self.bn1d(t.reshape(b, -1)))


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def conv_data(n: int = 10, classes: int = 5, seed: int = 0, size: int = 24):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, size, size, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x, y


def batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


# --------------------------------------------------------------------------
# diagonal_fisher
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_diagonal_fisher_matches_per_sample_loop(kind, float64):
    torch.manual_seed(0)
    model = ConvNet()
    x, y = conv_data()
    got = diagonal_fisher(model, batches(x, y, 4), kind)
    assert_fisher_close(got, reference_fisher(model, x, y, kind))


@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_diagonal_fisher_float32_dataloader(kind):
    torch.manual_seed(1)
    model = ConvNet()
    x, y = conv_data(12)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    got = diagonal_fisher(model, loader, kind)
    want = reference_fisher(model.double(), x.double(), y, kind)
    assert_fisher_close({k: v.double() for k, v in got.items()}, want, rtol=1e-4)


class Unusual(nn.Module):
    """Layers the identity must not be trusted for: attention (weights used
    outside the Linear's forward), a Linear whose weight is reused in the
    parent's forward, a tied weight, and a Linear on a flattened batch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.mix = nn.Linear(4, 4)  # applied to (B*T, 4): rows are not samples
        self.fc = nn.Linear(64, 5)
        self.extra = nn.Linear(5, 5)
        self.tied = nn.Linear(5, 5, bias=False)
        self.tied2 = nn.Linear(5, 5, bias=False)
        self.tied2.weight = self.tied.weight

    def forward(self, x):
        x = F.relu(self.conv(x))
        b = x.shape[0]
        t = x.flatten(2).transpose(1, 2)  # (B, 16, 4)
        t, _ = self.attn(t, t, t)
        t = self.mix(t.reshape(-1, 4)).reshape(b, -1)
        z = self.fc(t)
        z = self.extra(z) + F.linear(z, self.extra.weight)
        return self.tied2(torch.tanh(self.tied(z)))


@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_diagonal_fisher_falls_back_for_unusual_layers(kind, float64):
    torch.manual_seed(2)
    model = Unusual()
    x, y = conv_data(9, size=8)
    got = diagonal_fisher(model, batches(x, y, 4), kind)
    assert_fisher_close(got, reference_fisher(model, x, y, kind))


def test_diagonal_fisher_timm_conv_variants(float64):
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(3)
    model = nn.Sequential(
        layers.Conv2dSame(2, 4, 3, stride=2),  # dynamic 'same' padding
        nn.ReLU(),
        layers.StdConv2d(4, 4, 3, padding=1),  # weight standardisation
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    x, y = conv_data(7, classes=3, size=8)
    for kind in ("true", "empirical"):
        got = diagonal_fisher(model, batches(x, y, 3), kind)
        assert_fisher_close(got, reference_fisher(model, x, y, kind))


def test_diagonal_fisher_leaves_model_as_it_was(float64):
    torch.manual_seed(4)
    model = ConvNet().train()
    model.head.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = conv_data(8)
    got = diagonal_fisher(model, batches(x, y, 8), "true")
    assert "head.bias" not in got  # frozen parameters are skipped
    assert set(got) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics too
    assert all(p.grad is None for p in model.parameters())
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    # computed in eval mode: BatchNorm used its running statistics
    assert_fisher_close(got, reference_fisher(model, x, y, "true"))


def test_diagonal_fisher_errors():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="kind"):
        diagonal_fisher(model, [(torch.randn(2, 3), torch.tensor([0, 1]))], "nope")
    with pytest.raises(ValueError, match="no samples"):
        diagonal_fisher(model, [], "true")
    with pytest.raises(ValueError, match="labels"):
        diagonal_fisher(model, [torch.randn(2, 3)], "empirical")
    # the true Fisher does not need labels
    assert diagonal_fisher(model, [torch.randn(2, 3)], "true")["weight"].shape == (2, 3)


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


@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_diagonal_fisher_float64_model_float32_loader(kind):
    """A float64 model fed float32 batches computes in float64 (fast layers and the PReLU fallback)."""
    torch.manual_seed(5)
    model = ConvNet().double()
    x, y = conv_data(9)
    assert x.dtype == torch.float32
    got = diagonal_fisher(model, DataLoader(TensorDataset(x, y), batch_size=4), kind)
    assert all(v.dtype == torch.float64 for v in got.values())
    assert_fisher_close(got, reference_fisher(model, x.double(), y, kind), rtol=1e-9)


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
