"""diagonal_fisher against a per-sample loop: every layer identity, the fallback, dtypes, the model left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from healing_pl.gradients.fisher import diagonal_fisher
from tests.gradients.shared import ConvNet, batches, conv_data

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


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


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
