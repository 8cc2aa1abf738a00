"""Models and data shared by the tests of the gradient math and of the unlearning methods built on it.

The Fisher tests (tests/gradients/test_fisher.py, tests/unlearning/test_fisher.py) use :class:`ConvNet`;
the LiSSA and influence tests (tests/gradients/test_lissa.py, tests/unlearning/test_influence*.py) use the
logistic regression on digits with its explicit Hessian and the tiny tanh MLP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------
# Fisher: a CNN with every layer identity
# --------------------------------------------------------------------------


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


def conv_data(n: int = 10, classes: int = 5, seed: int = 0, size: int = 24):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, size, size, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x, y


def batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


# --------------------------------------------------------------------------
# LiSSA and influence: logistic regression on digits with its explicit Hessian
# --------------------------------------------------------------------------

DAMPING = 0.05


def load_digits64() -> tuple[torch.Tensor, torch.Tensor]:
    """All of sklearn's digits, pixels scaled to [0, 1], in float64."""
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


def train_logistic(x, y) -> tuple[dict, torch.Tensor, float]:
    """Logistic regression trained a little (not to convergence) on ``x, y``: its state, Hessian and top eigenvalue."""
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
# LiSSA and influence conventions: a tiny non-convex MLP
# --------------------------------------------------------------------------


def tiny_mlp():
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
