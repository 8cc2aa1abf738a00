"""SSD, SalUn, SCRUB, NegGrad+ and finetune against independent transcriptions of their reference codes' formulas.

Small float64 models; every expected value is written out here from the formula (an explicit loop over batches
with ``.backward()``, a closed-form softmax gradient, a hand-written SGD update), not by calling the code under test.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import Classifier
from healing_pl.unlearning import UNLEARNERS
from healing_pl.unlearning import salun as salun_module
from healing_pl.unlearning.finetune import finetune
from healing_pl.unlearning.loop import make_optimizer, train_epochs
from healing_pl.unlearning.neggrad_plus import neggrad_plus_loss
from healing_pl.unlearning.salun import random_labels, saliency_mask, salun
from healing_pl.unlearning.scrub import epoch_lr, max_step_loss, min_step_loss, scrub
from healing_pl.unlearning.ssd import batch_mean_importance, dampen


def _linear(seed=0, d=5, k=4):
    torch.manual_seed(seed)
    return torch.nn.Linear(d, k).double()


def _batches(seed=1, n=(7, 7, 3), d=5, k=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(m, d, generator=g, dtype=torch.float64), torch.randint(0, k, (m,), generator=g)) for m in n]


# --------------------------------------------------------------------------- SSD
def test_ssd_importance_is_the_mean_of_squared_batch_mean_gradients():
    model, batches = _linear(), _batches()
    # the reference's loop: zero the gradients, backward the batch-mean CE, add grad**2, divide by the batch count
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad**2
    expected = {n: v / len(batches) for n, v in expected.items()}
    model.zero_grad()
    got = batch_mean_importance(model, batches)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=0, atol=1e-15)
    # it depends on the batching: one batch of all the samples gives another importance
    one = batch_mean_importance(model, [(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))])
    assert not all(torch.allclose(one[n], expected[n]) for n in one)


def test_ssd_dampening_follows_the_reference_selection_and_bound():
    model = _linear(d=3, k=2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]], dtype=torch.float64))
        model.bias.copy_(torch.tensor([0.5, -0.5], dtype=torch.float64))
    f64 = dict(dtype=torch.float64)
    d = {"weight": torch.tensor([[1.0, 1.0, 2.0], [0.1, 1.0, 3.0]], **f64), "bias": torch.tensor([1.0, 1.0], **f64)}
    f = {
        "weight": torch.tensor([[5.0, 11.0, 40.0], [2.0, 10.0, 30.0]], **f64),
        "bias": torch.tensor([100.0, 0.0], **f64),
    }
    lam, alpha = 2.0, 10.0
    # by hand: selected where f > alpha d: w[0,1] (11 > 10), w[0,2] (40 > 20), w[1,0] (2 > 1), bias[0] (100 > 10);
    # not w[1,1] (10 = 10) nor w[1,2] (30 = 30); factor min(lam d / f, 1)
    factors_w = [[1.0, 2 / 11, 4 / 40], [min(0.2 / 2.0, 1.0), 1.0, 1.0]]
    expected_w = torch.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]], dtype=torch.float64) * torch.tensor(
        factors_w, dtype=torch.float64
    )
    expected_b = torch.tensor([0.5 * 2 / 100, -0.5], dtype=torch.float64)
    share = dampen(model, d, f, lam, alpha)
    assert share == 4 / 8
    torch.testing.assert_close(model.weight.detach(), expected_w, rtol=0, atol=1e-15)
    torch.testing.assert_close(model.bias.detach(), expected_b, rtol=0, atol=1e-15)
    # lambda large enough that lam d / f > 1 for a selected weight: the factor is bounded by 1 (no growth)
    model2 = _linear(d=3, k=2)
    before = model2.weight.detach().clone()
    dampen(
        model2,
        {"weight": torch.ones(2, 3), "bias": torch.ones(2)},
        {"weight": torch.full((2, 3), 20.0), "bias": torch.ones(2)},
        lam=100.0,
        alpha=10.0,
    )
    assert torch.equal(model2.weight.detach(), before)


# --------------------------------------------------------------------------- SalUn
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75, 0.9])
def test_salun_mask_keeps_exactly_int_n_ratio_weights(ratio):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3).double()  # 21 weights
    x = torch.randn(10, 6, dtype=torch.float64)
    x[:, 3:] = 0.0  # the weights of inputs 3..5 get exactly zero gradients: 9 ties at zero
    y = torch.randint(0, 3, (10,))
    mask = saliency_mask(model, [(x[:5], y[:5]), (x[5:], y[5:])], ratio)
    # the reference: rank the magnitudes of the summed gradients over the whole network (ties: earlier first)
    model.zero_grad()
    for xb, yb in ((x[:5], y[:5]), (x[5:], y[5:])):
        F.cross_entropy(model(xb), yb).backward()
    flat = torch.cat([p.grad.abs().flatten() for p in model.parameters()])
    keep = int(flat.numel() * ratio)
    ranks = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
    expected = torch.zeros(flat.numel(), dtype=torch.bool)
    expected[ranks[:keep]] = True
    got = torch.cat([mask["weight"].flatten(), mask["bias"].flatten()])
    assert int(got.sum()) == keep < flat.numel()
    assert torch.equal(got, expected)


def test_salun_labels_are_uniform_over_all_classes_the_true_one_included():
    g = torch.Generator().manual_seed(0)
    true = torch.arange(10).repeat(1000)
    draws = torch.stack([random_labels(len(true), 10, g) for _ in range(3)])
    same = (draws == true).double().mean().item()
    assert abs(same - 0.1) < 0.01  # 30,000 draws: standard error 0.0017
    counts = torch.bincount(draws.flatten(), minlength=10).double() / draws.numel()
    assert (counts - 0.1).abs().max() < 0.01
    assert not torch.equal(draws[0], draws[1])  # each call draws afresh


@pytest.fixture(scope="module")
def digits():
    dm = HealingDataModule("digits", primary=0.6, backup=0.15, val=0.1, batch_size=64, seed=0)
    torch.manual_seed(0)
    model = Classifier(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=3e-3)
    forget = dm.primary_ids[:40]
    return dm, model, forget


def test_salun_redraws_labels_every_epoch_and_masks_gradients(digits, monkeypatch):
    dm, model, forget = digits
    drawn = []

    def spy(n, k, generator):
        drawn.append(random_labels(n, k, generator))
        return drawn[-1]

    monkeypatch.setattr(salun_module, "random_labels", spy)
    out, info = salun(model, dm, forget, lr=0.05, ratio=0.3, epochs=2, weight_decay=0.0, seed=3)
    assert len(drawn) == 2 and not torch.equal(drawn[0], drawn[1])
    assert info["salient_fraction"] == pytest.approx(
        int(0.3 * sum(p.numel() for p in model.parameters())) / sum(p.numel() for p in model.parameters())
    )
    # without weight decay, a masked gradient is zero from the first step on, so SGD (momentum too) never moves
    # the non-salient weights
    mask = saliency_mask(copy.deepcopy(model), dm.loader(forget, batch_size=64), 0.3)
    for (name, p), q in zip(out.named_parameters(), model.parameters()):
        assert torch.equal(p[~mask[name]], q[~mask[name]]), name
        assert not torch.equal(p[mask[name]], q[mask[name]]), name


# --------------------------------------------------------------------------- SCRUB
def _softmax_grad_w(x, p_minus_target, scale):
    """d loss / dW for a linear model when d loss / d logits = scale * (p - target) per sample."""
    return scale * p_minus_target.T @ x, scale * p_minus_target.sum(0)


def test_scrub_max_and_min_steps_equal_hand_computed_sgd_updates():
    teacher, student = _linear(seed=0), _linear(seed=5)
    ((x, y),) = _batches(n=(6,))
    T, lr, mom, wd, alpha, gamma = 4.0, 0.1, 0.9, 5e-4, 0.5, 1.0
    n = len(x)
    with torch.no_grad():
        pt = torch.softmax(teacher(x) / T, 1)

    def hand_kl_grad(w, b):  # d [T^2 KL(pt || softmax(s/T)) / n] / d s = T (softmax(s/T) - pt) / n
        q = torch.softmax((x @ w.T + b) / T, 1)
        return _softmax_grad_w(x, q - pt, T / n)

    def hand_ce_grad(w, b):  # d [CE / n] / d s = (softmax(s) - onehot) / n
        p = torch.softmax(x @ w.T + b, 1)
        return _softmax_grad_w(x, p - F.one_hot(y, 4).double(), 1.0 / n)

    w0, b0 = student.weight.detach().clone(), student.bias.detach().clone()
    opt = make_optimizer(student, "sgd", lr, momentum=mom, weight_decay=wd)
    # one max step: loss = -KL, so the gradient is minus the KL gradient; SGD's first step: v = g + wd w
    train_epochs(student, [(x, y)], lambda b: max_step_loss(student(b[0]), teacher(b[0]).detach(), T), opt)
    gw, gb = hand_kl_grad(w0, b0)
    vw, vb = -gw + wd * w0, -gb + wd * b0
    w1, b1 = w0 - lr * vw, b0 - lr * vb
    torch.testing.assert_close(student.weight.detach(), w1, rtol=0, atol=1e-14)
    torch.testing.assert_close(student.bias.detach(), b1, rtol=0, atol=1e-14)
    # one min step on the same optimizer: v = mom v + g + wd w
    train_epochs(
        student,
        [(x, y)],
        lambda b: min_step_loss(student(b[0]), teacher(b[0]).detach(), b[1], alpha=alpha, gamma=gamma, temperature=T),
        opt,
    )
    kw, kb = hand_kl_grad(w1, b1)
    cw, cb = hand_ce_grad(w1, b1)
    vw, vb = mom * vw + gamma * cw + alpha * kw + wd * w1, mom * vb + gamma * cb + alpha * kb + wd * b1
    torch.testing.assert_close(student.weight.detach(), w1 - lr * vw, rtol=0, atol=1e-14)
    torch.testing.assert_close(student.bias.detach(), b1 - lr * vb, rtol=0, atol=1e-14)


def test_scrub_first_max_step_is_inert_and_the_schedule_is_the_references():
    model, ((x, _),) = _linear(), _batches(n=(6,))
    loss = max_step_loss(model(x), model(x).detach(), 4.0)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(float(g.abs().max()) < 1e-15 for g in grads)  # student = teacher: the KL's gradient vanishes
    # lr decays by the rate after epochs 3, 5 and 9
    assert [epoch_lr(1.0, e, 0.1) for e in (1, 3, 4, 5, 6, 9, 10)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01, 0.001])


@pytest.fixture(scope="module")
def trained_digits():
    """A digits small CNN trained 8 epochs (about 98% validation accuracy) and 40 random primary samples."""
    dm = HealingDataModule("digits", primary=0.6, backup=0.15, val=0.1, batch_size=64, seed=0)
    torch.manual_seed(0)
    model = Classifier(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=3e-3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = dm.loader(dm.primary_ids, shuffle=True, batch_size=64)
    train_epochs(model.train(), loader, lambda b: F.cross_entropy(model(b[0]), b[1]), opt, epochs=8)
    order = torch.randperm(dm.primary_ids.numel(), generator=torch.Generator().manual_seed(0))
    return dm, model.eval(), dm.primary_ids[order[:40]]


@pytest.mark.parametrize("lr, rewinds", [(0.003, True), (0.01, False)])
def test_scrub_r_rewinds_to_the_epoch_whose_forget_error_is_closest_to_the_validation_reference(
    trained_digits, lr, rewinds
):
    """SCRUB+R against a brute force: the state after epoch j of one run is the final state of a run of j epochs
    (the schedule and the seeded loaders do not depend on the epoch count), so each epoch's forget error comes from
    its own run; the reference is the final student's error on validation images matched to the forget classes."""
    dm, model, forget = trained_digits
    knobs = dict(lr=lr, msteps=2, forget_batch=8, seed=0)
    runs = [scrub(model, dm, forget, epochs=j, **{**knobs, "msteps": min(2, j)})[0] for j in range(1, 5)]
    held = dm.matched_ids(forget, "val", 0)
    assert torch.isin(held, dm.splits["val"]).all() and torch.equal(
        dm.targets[held].bincount(minlength=10), dm.targets[forget].bincount(minlength=10)
    )

    errors = [_error(m, dm, forget) for m in runs]
    reference = _error(runs[-1], dm, held)
    expected = 4
    if errors[-1] > reference:
        gaps = [abs(e - reference) for e in errors]
        expected = max(j for j in range(1, 5) if gaps[j - 1] == min(gaps))
    out, info = scrub(model, dm, forget, epochs=4, rewind=True, **knobs)
    assert info == {"rewind_epoch": expected, "rewind_reference": pytest.approx(reference)}
    assert (expected < 4) == rewinds  # one case rewinds, one keeps the final student
    for (name, a), b in zip(out.state_dict().items(), runs[expected - 1].state_dict().values()):
        assert torch.equal(a, b), name
    plain, none = scrub(model, dm, forget, epochs=4, **knobs)
    assert none == {} and all(
        torch.equal(a, b) for a, b in zip(plain.state_dict().values(), runs[-1].state_dict().values())
    )


def _error(model, dm, ids) -> float:
    """Error rate by an explicit per-sample loop over the pool's images and labels."""
    wrong = 0
    with torch.no_grad():
        for i in ids.tolist():
            x, y = dm.pool.train[i]
            wrong += int(model.eval()(x.unsqueeze(0)).argmax(1).item() != y)
    return wrong / len(ids)


# --------------------------------------------------------------------------- NegGrad+
def test_neggrad_plus_loss_is_alpha_remain_minus_one_minus_alpha_forget():
    g = torch.Generator().manual_seed(0)
    lr_, lf = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    yr, yf = torch.tensor([0, 1, 2, 1, 0]), torch.tensor([2, 2, 0, 1])

    def ce(logits, y):  # explicit log-sum-exp
        return sum(float(torch.log(torch.exp(r).sum()) - r[c]) for r, c in zip(logits, y)) / len(y)

    for alpha in (0.95, 0.9999):
        expected = alpha * ce(lr_, yr) - (1 - alpha) * ce(lf, yf)
        assert float(neggrad_plus_loss(lr_, yr, lf, yf, alpha)) == pytest.approx(expected, abs=1e-14)


# --------------------------------------------------------------------------- finetune
def test_finetune_sgd_equals_a_hand_written_sgd_fine_tune(digits):
    dm, model, forget = digits
    out = finetune(model, dm, forget, epochs=1, lr=0.01)
    hand = copy.deepcopy(model).train()
    opt = torch.optim.SGD(hand.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for x, y in dm.loader(dm.remain_ids(forget), shuffle=True, batch_size=64):
        opt.zero_grad()
        F.cross_entropy(hand(x), y).backward()
        opt.step()
    for (name, a), b in zip(out.state_dict().items(), hand.state_dict().values()):
        assert torch.equal(a, b), name


def test_reference_defaults_are_the_constructor_defaults():
    """The defaults the docs name (docs/methods.md)."""
    ssd, scrub = UNLEARNERS["ssd"](), UNLEARNERS["scrub"]()
    salun_, neg, ft = UNLEARNERS["salun"](), UNLEARNERS["neggrad_plus"](), UNLEARNERS["finetune"]()
    assert (ssd.lam, ssd.alpha, ssd.batch_r, ssd.importance) == (1.0, 10.0, 128, "batch_mean")
    assert (scrub.alpha, scrub.gamma, scrub.msteps, scrub.epochs, scrub.temperature) == (0.5, 1.0, 3, 5, 4.0)
    assert (scrub.forget_batch, scrub.batch_size, scrub.lr, scrub.optimizer) == (32, 128, 5e-4, "sgd")
    assert (salun_.ratio, salun_.epochs, salun_.lr, salun_.optimizer) == (0.5, 10, 0.013, "sgd")
    assert (neg.alpha, neg.epochs, neg.lr, neg.optimizer) == (0.95, 5, 0.01, "sgd")
    assert (ft.epochs, ft.lr, ft.optimizer, ft.momentum, ft.weight_decay) == (10, 0.01, "sgd", 0.9, 5e-4)
