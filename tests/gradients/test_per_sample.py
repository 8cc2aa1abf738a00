"""The shared per-sample gradient engine against a plain per-sample autograd loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from healing_pl.gradients.params import to_model
from healing_pl.gradients.per_sample import (
    grad_dots,
    grad_norms,
    iter_per_sample_grads,
    per_sample_reduce,
    sum_of_squares,
)

ENGINES = ["vmap", "loop"]


class SmallCNN(nn.Module):
    """Conv, PReLU (a backward with its own batching rule), BatchNorm (eval), a frozen layer, an unused one."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.prelu = nn.PReLU(3)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 5 * 5, classes)
        self.frozen = nn.Linear(classes, classes)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(2, 2)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        z = self.bn(self.prelu(self.conv(x)))
        return self.frozen(self.head(z.flatten(1)))


def data(n: int = 7, classes: int = 4, dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 5, 5, generator=gen, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=gen)
    cots = torch.randn(n, 3, classes, generator=gen, dtype=dtype)
    return x, y, cots


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SmallCNN().double().eval()


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def loop_loss_grads(model, x, y):
    """Sample i's gradient of its own cross-entropy, one backward pass per sample."""
    named = trainable(model)
    out = {n: [] for n, _ in named}
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for (n, p), g in zip(named, grads):
            out[n].append(torch.zeros_like(p) if g is None else g)
    return {n: torch.stack(gs) for n, gs in out.items()}


def loop_cotangent_grads(model, x, cots):
    """``(B, K, *p.shape)``: the gradient of ``<model(x_i), cots[i, k]>``, one sample and cotangent at a time."""
    named = trainable(model)
    out = {n: [] for n, _ in named}
    for i in range(x.shape[0]):
        rows = {n: [] for n, _ in named}
        for k in range(cots.shape[1]):
            value = (model(x[i : i + 1])[0] * cots[i, k]).sum()
            grads = torch.autograd.grad(value, [p for _, p in named], allow_unused=True)
            for (n, p), g in zip(named, grads):
                rows[n].append(torch.zeros_like(p) if g is None else g)
        for n in out:
            out[n].append(torch.stack(rows[n]))
    return {n: torch.stack(gs) for n, gs in out.items()}


def collect(chunks) -> tuple[list[int], dict[str, torch.Tensor]]:
    starts, parts = [], {}
    for start, grads in chunks:
        starts.append(start)
        for n, g in grads.items():
            parts.setdefault(n, []).append(g)
    return starts, {n: torch.cat(gs) for n, gs in parts.items()}


def assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)  # named_parameters order, trainable only
    for n in want:
        assert got[n].shape == want[n].shape, n
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-12, msg=n)


@pytest.mark.parametrize("engine", ENGINES)
def test_loss_gradients_match_a_loop(model, engine):
    x, y, _ = data()
    starts, got = collect(iter_per_sample_grads(model, x, loss_fn=F.cross_entropy, targets=y, engine=engine))
    assert starts == [0]  # the default bound holds the whole batch
    want = loop_loss_grads(model, x, y)
    assert_same(got, want)
    assert "frozen.weight" not in got
    assert float(got["unused.weight"].abs().max()) == 0.0  # not used by the objective: zeros


@pytest.mark.parametrize("engine", ENGINES)
def test_cotangent_gradients_match_a_loop(model, engine):
    x, _, cots = data()
    _, got = collect(iter_per_sample_grads(model, x, cotangents=cots, engine=engine))
    assert got["conv.weight"].shape == (7, 3, 3, 2, 3, 3)  # (B, K, *p.shape)
    assert_same(got, loop_cotangent_grads(model, x, cots))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("objective", ["loss", "cotangents"])
def test_chunks_stay_below_the_bound(model, engine, objective):
    x, y, cots = data(8)
    size = sum(p.numel() for _, p in trainable(model))
    k = 1 if objective == "loss" else cots.shape[1]
    kw = dict(loss_fn=F.cross_entropy, targets=y) if objective == "loss" else dict(cotangents=cots)
    per_chunk = 3
    chunks = list(iter_per_sample_grads(model, x, engine=engine, max_elements=per_chunk * k * size + 5, **kw))
    assert [start for start, _ in chunks] == [0, 3, 6]
    assert [len(g["conv.weight"]) for _, g in chunks] == [3, 3, 2]
    for _, grads in chunks:
        assert sum(g.numel() for g in grads.values()) <= per_chunk * k * size
    _, got = collect(chunks)
    want = loop_loss_grads(model, x, y) if objective == "loss" else loop_cotangent_grads(model, x, cots)
    assert_same(got, want)
    # a bound below one sample's gradients still makes progress, one sample at a time
    tiny = list(iter_per_sample_grads(model, x, engine=engine, max_elements=1, **kw))
    assert [start for start, _ in tiny] == list(range(8))
    assert_same(collect(tiny)[1], want)


@pytest.mark.parametrize("engine", ENGINES)
def test_sum_of_squares_and_reductions(model, engine):
    x, y, cots = data(9)
    want = loop_cotangent_grads(model, x, cots)
    got = sum_of_squares(model, x, cotangents=cots, engine=engine, max_elements=2000)
    assert_same(got, {n: g.square().sum((0, 1)) for n, g in want.items()})
    loss_grads = loop_loss_grads(model, x, y)
    got = sum_of_squares(model, x, loss_fn=F.cross_entropy, targets=y, engine=engine, max_elements=2000)
    assert_same(got, {n: g.square().sum(0) for n, g in loss_grads.items()})

    flat = torch.cat([g.flatten(1) for g in loss_grads.values()], dim=1)  # (B, P)
    kw = dict(loss_fn=F.cross_entropy, targets=y, engine=engine, max_elements=2000)
    norms = per_sample_reduce(model, x, grad_norms, **kw)
    torch.testing.assert_close(norms, flat.norm(dim=1), rtol=1e-10, atol=1e-12)
    direction = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dots = per_sample_reduce(model, x, grad_dots(direction), **kw)
    torch.testing.assert_close(dots, flat @ direction, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_chosen_parameters_only(model, engine):
    x, _, cots = data(5)
    names = ["prelu.weight", "head.bias"]
    got = sum_of_squares(model, x, cotangents=cots, names=names, engine=engine)
    want = loop_cotangent_grads(model, x, cots)
    assert_same(got, {n: want[n].square().sum((0, 1)) for n in names})


@pytest.mark.parametrize("engine", ENGINES)
def test_float32_inputs_run_in_the_models_dtype(model, engine):
    """A float64 model gets float32 inputs and cotangents: they are cast, the gradients are float64."""
    x, y, cots = data()
    _, got = collect(iter_per_sample_grads(model, x.float(), loss_fn=F.cross_entropy, targets=y, engine=engine))
    assert all(g.dtype == torch.float64 for g in got.values())
    assert_same(got, loop_loss_grads(model, x.float().double(), y))
    squares = sum_of_squares(model, x.float(), cotangents=cots.float(), engine=engine)
    assert all(s.dtype == torch.float64 for s in squares.values())


@pytest.mark.parametrize("engine", ENGINES)
def test_callers_grad_mode_is_kept(model, engine):
    x, y, _ = data(4)
    with torch.no_grad():
        for _, grads in iter_per_sample_grads(
            model, x, loss_fn=F.cross_entropy, targets=y, engine=engine, max_elements=1
        ):
            assert not torch.is_grad_enabled()  # the engine enables gradients only while it computes
            assert not any(g.requires_grad for g in grads.values())


def test_engine_errors(model):
    x, y, cots = data(2)
    with pytest.raises(ValueError, match="engine"):
        next(iter_per_sample_grads(model, x, loss_fn=F.cross_entropy, targets=y, engine="jax"))
    with pytest.raises(ValueError, match="exactly one"):
        next(iter_per_sample_grads(model, x))
    with pytest.raises(ValueError, match="exactly one"):
        next(iter_per_sample_grads(model, x, loss_fn=F.cross_entropy, targets=y, cotangents=cots))
    with pytest.raises(ValueError, match="no parameters named"):
        next(iter_per_sample_grads(model, x, cotangents=cots, names=["nope"]))
    with pytest.raises(ValueError, match="require gradients"):
        next(iter_per_sample_grads(nn.Linear(2, 2).requires_grad_(False), torch.randn(3, 2), cotangents=cots))
    empty = sum_of_squares(model, x[:0], cotangents=cots[:0])
    assert all(float(s.abs().max()) == 0.0 for s in empty.values())


def test_to_model_casts_floating_tensors_only():
    model = nn.Linear(2, 2).double()
    x = torch.randn(3, 2)
    y = torch.tensor([0, 1, 1])
    batch = to_model({"x": x, "pair": (x, y), "list": [y], "name": "a"}, model)
    assert batch["x"].dtype == torch.float64 and batch["pair"][0].dtype == torch.float64
    assert batch["pair"][1].dtype == torch.long and batch["list"][0].dtype == torch.long
    assert batch["name"] == "a"
    same = torch.randn(2, 2, dtype=torch.float64)
    assert to_model(same, model) is same  # nothing to do: no copy
    assert to_model(x, nn.ReLU()) is x  # no parameters: dtype kept
