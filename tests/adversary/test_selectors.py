"""Forget-set selectors on sklearn's digits with a tiny linear classifier."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

from healing_pl.adversary.selectors import (
    SELECTORS,
    AttackSurface,
    BlindGuessSelector,
    ClassSelector,
    GradientSelector,
    RandomSelector,
    WorstLogitsSelector,
    build_surface,
    per_sample_grad_norms,
    select_forget_set,
)


class DigitsPool(Dataset):
    """The 1797 8x8 digits as a pool: ``pool[i] -> (x (1, 8, 8), y)``."""

    def __init__(self):
        digits = load_digits()
        self.data = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        self.targets = torch.tensor(digits.target, dtype=torch.long)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.data[i], int(self.targets[i])


@pytest.fixture(scope="module")
def pool():
    return DigitsPool()


@pytest.fixture(scope="module")
def split(pool):
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    return {"primary": perm[:1200], "backup": perm[1200:1500], "val": perm[1500:]}


@pytest.fixture(scope="module")
def model(pool, split):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = pool.data[split["primary"]], pool.targets[split["primary"]]
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def surface(pool, split, system="blind", data="known", model=None, **kw):
    return build_surface(
        system_knowledge=system, data_knowledge=data, dataset=pool, primary_ids=split["primary"], model=model, **kw
    )


def check_contract(ids, budget, candidates):
    assert ids.dtype == torch.long and ids.dim() == 1
    assert len(ids) == budget
    assert len(torch.unique(ids)) == budget
    assert torch.isin(ids, candidates).all()


# ----------------------------------------------------------------- knowledge


def reachable(obj, seen=None):
    """Every object reachable through attributes, fields, containers and bound methods.

    Function internals (closure cells, globals) are not followed: the oracle
    is a closure on purpose, and Python cannot hide a closure's cells.
    """
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, (str, bytes, int, float, bool, type(None), torch.Tensor)):
        return
    if isinstance(obj, dict):
        children = list(obj.keys()) + list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif isinstance(obj, types.FunctionType):
        children = []
    elif isinstance(obj, types.MethodType):
        children = [obj.__self__]
    else:
        children = list(getattr(obj, "__dict__", {}).values())
    for child in children:
        yield from reachable(child, seen)


def test_output_aware_surface_holds_no_model(pool, split, model):
    s = surface(pool, split, "output_aware", model=model)
    params = {p.data_ptr() for p in model.parameters()}
    for obj in reachable(s):
        assert not isinstance(obj, (nn.Module, nn.Parameter))
        if isinstance(obj, torch.Tensor):
            assert obj.data_ptr() not in params
    assert s.glass_box is None
    assert not isinstance(getattr(s.predict, "__self__", None), nn.Module)
    logits = s.predict(split["primary"][:5])
    assert logits.shape == (5, 10)
    assert not logits.requires_grad and logits.grad_fn is None
    assert logits.data_ptr() not in params


def test_predict_restores_the_training_mode(pool, split, model):
    s = surface(pool, split, "output_aware", model=model)
    model.train()
    s.predict(split["primary"][:3])
    assert model.training
    model.eval()
    s.predict(split["primary"][:3])
    assert not model.training


def test_blind_surface_has_no_oracle_and_blind_data_no_labels(pool, split, model):
    s = surface(pool, split, "blind", "blind", model=model)
    assert s.predict is None and s.glass_box is None and s.labels is None
    assert len(s.candidate_ids) == len(pool)  # members and non-members alike
    members, outsiders = s.guess_pools
    assert len(members) == 1200 and len(outsiders) == len(pool) - 1200
    known = surface(pool, split, "blind", "known")
    assert torch.equal(known.candidate_ids, torch.sort(split["primary"]).values)
    assert torch.equal(known.labels, pool.targets[known.candidate_ids])
    assert known.guess_pools is None


def test_parameter_aware_surface_has_the_glass_box(pool, split, model):
    s = surface(pool, split, "parameter_aware", model=model, val_ids=split["val"])
    assert s.glass_box.model is model
    ids = split["primary"][[7, 0, 3]]  # not sorted: the logits come back in the order asked
    with torch.no_grad():
        own = model(pool.data[ids])
    assert torch.equal(s.predict(ids), own)
    assert len(s.glass_box.val_ids) == len(split["val"])
    assert torch.equal(s.glass_box.train_ids, torch.sort(split["primary"]).values)
    blind_data = surface(pool, split, "parameter_aware", "blind", model=model)
    assert blind_data.glass_box.train_ids is None and blind_data.labels is None


def test_chosen_training_set_selects_like_a_known_one(pool, split):
    chosen = surface(pool, split, "blind", "chosen")
    known = surface(pool, split, "blind", "known")
    assert torch.equal(chosen.candidate_ids, known.candidate_ids)
    assert torch.equal(ClassSelector(4).select(chosen, 9), ClassSelector(4).select(known, 9))


@pytest.mark.parametrize(
    "selector, system, data",
    [
        (WorstLogitsSelector(), "blind", "known"),
        (GradientSelector(), "output_aware", "known"),
        (ClassSelector(3), "blind", "blind"),
    ],
)
def test_selector_refuses_a_surface_with_too_little_knowledge(pool, split, model, selector, system, data):
    s = surface(pool, split, system, data, model=model)
    with pytest.raises(ValueError, match="needs"):
        selector.select(s, 5)


def test_every_registered_selector_declares_its_knowledge():
    for name in SELECTORS.names():
        cls = SELECTORS[name]
        assert cls.name == name
        assert cls.needs_system in ("blind", "output_aware", "parameter_aware")
        assert cls.needs_data in ("blind", "known", "chosen")


def test_selector_never_gets_more_than_its_surface(pool, split, model):
    """A blind selector given a blind surface gets no oracle even if a model exists."""
    seen = {}

    class Spy(RandomSelector):
        name = "spy"

        def _choose(self, s, budget):
            seen["surface"] = s
            return super()._choose(s, budget)

    SELECTORS.register(Spy)  # only registered selectors run
    try:
        Spy().select(surface(pool, split, "blind", "known", model=model), 4)
    finally:
        SELECTORS.unregister("spy")
    assert isinstance(seen["surface"], AttackSurface)
    assert seen["surface"].predict is None and seen["surface"].glass_box is None


# ------------------------------------------------------------------ random


def test_random_respects_budget_and_seed(pool, split):
    s = surface(pool, split)
    a = RandomSelector(seed=1).select(s, 25)
    check_contract(a, 25, split["primary"])
    assert torch.equal(a, RandomSelector(seed=1).select(s, 25))
    assert not torch.equal(a, RandomSelector(seed=2).select(s, 25))


def test_random_over_a_blind_training_set_names_non_members(pool, split):
    s = surface(pool, split, data="blind", non_member_ids=split["backup"])
    ids = RandomSelector(seed=0).select(s, 300)
    check_contract(ids, 300, torch.cat([split["primary"], split["backup"]]))
    assert not torch.isin(ids, split["primary"]).all()  # some guesses miss the training set


def test_budget_larger_than_the_candidates_raises(pool, split):
    with pytest.raises(ValueError, match="exceeds"):
        RandomSelector().select(surface(pool, split), 1201)
    with pytest.raises(ValueError, match=">= 1"):
        RandomSelector().select(surface(pool, split), 0)


# ------------------------------------------------------------------- class


def test_class_picks_only_the_target_class(pool, split):
    s = surface(pool, split)
    ids = ClassSelector(target_class=7, seed=0).select(s, 25)
    check_contract(ids, 25, split["primary"])
    assert (pool.targets[ids] == 7).all()


def test_class_with_too_few_samples_raises(pool, split):
    s = surface(pool, split)
    n7 = int((pool.targets[split["primary"]] == 7).sum())
    ClassSelector(7).select(s, n7)
    with pytest.raises(ValueError, match="fewer than the budget"):
        ClassSelector(7).select(s, n7 + 1)


def test_class_outside_the_classes_raises(pool, split):
    with pytest.raises(ValueError, match="outside"):
        ClassSelector(10).select(surface(pool, split), 5)


# ------------------------------------------------------------ worst logits


def direct_scores(model, pool, ids, score):
    with torch.no_grad():
        logits = model(pool.data[ids])
    y = pool.targets[ids]
    true = logits[torch.arange(len(ids)), y]
    if score == "logit":
        return true
    other = logits.clone()
    other[torch.arange(len(ids)), y] = -float("inf")
    return true - other.max(1).values


@pytest.mark.parametrize("score", ["margin", "logit"])
def test_worst_logits_picks_the_k_lowest(pool, split, model, score):
    s = surface(pool, split, "output_aware", model=model)
    ids = WorstLogitsSelector(score=score).select(s, 40)
    check_contract(ids, 40, split["primary"])
    primary = torch.sort(split["primary"]).values
    scores = direct_scores(model, pool, primary, score)
    expected = primary[torch.argsort(scores, stable=True)[:40]]
    assert torch.equal(ids, expected)
    assert (torch.diff(direct_scores(model, pool, ids, score)) >= 0).all()  # lowest first


def test_worst_logits_ties_go_to_the_lower_id(pool, split):
    class Constant(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 10)

    s = surface(pool, split, "output_aware", model=Constant())
    ids = WorstLogitsSelector().select(s, 10)
    assert torch.equal(ids, torch.sort(split["primary"]).values[:10])


# ---------------------------------------------------------------- gradient


def loop_grad_norms(model, pool, ids):
    norms = []
    for i in ids.tolist():
        model.zero_grad()
        x, y = pool[i]
        F.cross_entropy(model(x[None]), torch.tensor([y])).backward()
        norms.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())))
    model.zero_grad()
    return torch.stack(norms)


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_per_sample_grad_norms_match_a_loop(pool, mlp, engine):
    ids = torch.arange(50)
    x, y = pool.data[ids], pool.targets[ids]
    got = per_sample_grad_norms(mlp, F.cross_entropy, x, y, engine=engine)
    torch.testing.assert_close(got, loop_grad_norms(mlp, pool, ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_gradient_selector_picks_the_largest_norms(pool, split, mlp, engine):
    s = surface(pool, split, "parameter_aware", model=mlp)
    mlp.train()
    ids = GradientSelector(engine=engine, batch_size=500).select(s, 30)
    assert mlp.training  # mode restored
    check_contract(ids, 30, split["primary"])
    primary = torch.sort(split["primary"]).values
    norms = loop_grad_norms(mlp, pool, primary)
    expected = primary[torch.argsort(-norms, stable=True)[:30]]
    # equal as sets; the order can only differ between numerically tied norms
    assert set(ids.tolist()) == set(expected.tolist())
    assert (torch.diff(loop_grad_norms(mlp, pool, ids)) <= 1e-5).all()


def exact_influence_scores(model, pool, split, damping):
    """Closed-form influence scores for the softmax-linear model (no autograd).

    Parameters are flattened as in ``model.parameters()``: the (10, 64) weight
    row-major, then the bias.  For one sample, with p the softmax and e the
    one-hot label, the loss gradient is (p - e) x^T for the weight and p - e
    for the bias; the Hessian is (diag(p) - p p^T) (x) [x; 1][x; 1]^T.
    """
    linear = model[1]
    train = torch.sort(split["primary"]).values

    def features(ids):
        x = pool.data[ids].flatten(1)
        return torch.cat([x, torch.ones(len(ids), 1)], dim=1)  # [x; 1]

    def per_sample_grads(ids):
        x = pool.data[ids].flatten(1)
        with torch.no_grad():
            r = F.softmax(linear(x), dim=1) - F.one_hot(pool.targets[ids], 10).float()
        return torch.cat([(r[:, :, None] * x[:, None, :]).flatten(1), r], dim=1)

    with torch.no_grad():
        p = F.softmax(linear(pool.data[train].flatten(1)), dim=1)
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (n, 10, 10)
    z = features(train)  # (n, 65)
    full = torch.einsum("ncd,nj,nk->cjdk", a, z, z) / len(train)  # (10, 65, 10, 65)
    # reorder [x; 1] blocks into (weight row-major, bias)
    order = [c * 65 + j for c in range(10) for j in range(64)] + [c * 65 + 64 for c in range(10)]
    hessian = full.reshape(650, 650)[order][:, order]
    g_val = per_sample_grads(split["val"]).mean(0)
    direction = torch.linalg.solve(hessian + damping * torch.eye(650), g_val)
    grads = per_sample_grads(train)
    return {"train": train, "scores": grads @ direction, "hessian": hessian, "grads": grads}


def test_exact_influence_helper_matches_autograd(pool, split, model):
    """The closed form above agrees with autograd on a few samples."""
    exact = exact_influence_scores(model, pool, split, 0.1)
    train, hessian = exact["train"], exact["hessian"]
    params = list(model.parameters())
    loss = F.cross_entropy(model(pool.data[train]), pool.targets[train])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    v = torch.randn(650, generator=torch.Generator().manual_seed(0))
    hv = torch.autograd.grad(flat @ v, params)
    hv = torch.cat([h.reshape(-1) for h in hv])
    torch.testing.assert_close(hv, hessian @ v, rtol=1e-4, atol=1e-5)
    for row, i in enumerate(train[:3].tolist()):
        one = F.cross_entropy(model(pool.data[i : i + 1]), pool.targets[i : i + 1])
        g = torch.cat([g.reshape(-1) for g in torch.autograd.grad(one, params)])
        torch.testing.assert_close(g, exact["grads"][row], rtol=1e-5, atol=1e-6)


def test_influence_mode_ranks_by_exact_influence(pool, split, model, monkeypatch):
    """With an exact inverse-HVP in place of LiSSA the ranking is exact."""
    damping = 0.1
    exact = exact_influence_scores(model, pool, split, damping)
    train, scores, hessian = exact["train"], exact["scores"], exact["hessian"]

    def exact_inverse_hvp(m, loss_fn, loader, vector, *, damping, scale, depth, repeats=1, progress=False):
        x, y = next(iter(loader))
        assert loss_fn(m, (x, y)).dim() == 0  # LiSSA's loss_fn(model, batch) form
        return torch.linalg.solve(hessian + damping * torch.eye(len(vector)), vector)

    fake = types.ModuleType("healing_pl.gradients.lissa")
    fake.lissa_inverse_hvp = exact_inverse_hvp
    monkeypatch.setitem(sys.modules, "healing_pl.gradients.lissa", fake)
    s = surface(pool, split, "parameter_aware", model=model, val_ids=split["val"])
    ids = GradientSelector("influence", damping=damping).select(s, 20)
    expected = train[torch.argsort(-scores, stable=True)[:20]]
    assert torch.equal(ids, expected)


def test_influence_mode_with_lissa_agrees_with_the_exact_ranking(pool, split, model):
    """End to end through the project's LiSSA (full-batch, so the recursion is exact)."""
    damping = 0.5
    exact = exact_influence_scores(model, pool, split, damping)
    train, scores, hessian = exact["train"], exact["scores"], exact["hessian"]
    scale = float(torch.linalg.eigvalsh(hessian).max()) + damping + 1.0
    s = surface(pool, split, "parameter_aware", model=model, val_ids=split["val"])
    selector = GradientSelector("influence", damping=damping, scale=scale, depth=40, batch_size=2000)
    ids = selector.select(s, 20)
    expected = train[torch.argsort(-scores, stable=True)[:20]]
    assert len(set(ids.tolist()) & set(expected.tolist())) >= 19


def test_influence_mode_needs_validation_ids(pool, split, model):
    s = surface(pool, split, "parameter_aware", model=model)
    with pytest.raises(ValueError, match="val_ids"):
        GradientSelector("influence").select(s, 5)


# ------------------------------------------------------------- blind guess


def test_blind_guess_mixes_members_and_non_members(pool, split):
    outsiders = torch.cat([split["backup"], split["val"]])
    s = surface(pool, split, "blind", "blind", non_member_ids=outsiders)
    ids = BlindGuessSelector(member_fraction=0.3, seed=4).select(s, 50)
    check_contract(ids, 50, torch.cat([split["primary"], outsiders]))
    assert int(torch.isin(ids, split["primary"]).sum()) == 15
    assert torch.equal(ids, BlindGuessSelector(member_fraction=0.3, seed=4).select(s, 50))


def test_blind_guess_needs_a_blind_training_set(pool, split):
    with pytest.raises(ValueError, match="data_knowledge='blind'"):
        BlindGuessSelector().select(surface(pool, split), 5)


# ----------------------------------------------------------- the pipeline's call


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("random", {}),
        ("random", dict(data_knowledge="blind")),
        ("class", dict(target_class=2)),
        ("worst_logits", dict(system_knowledge="output_aware")),
        ("gradient", dict(system_knowledge="parameter_aware", engine="loop")),
        ("gradient", dict(system_knowledge="parameter_aware", mode="influence", damping=0.5, scale=2.0, depth=20)),
        ("blind_guess", dict(member_fraction=0.5)),
    ],
)
def test_select_forget_set_from_a_selector(pool, split, model, name, kwargs):
    selector = SELECTORS[name](budget=0.02, seed=3, **kwargs)  # 2% of 1200 = 24
    kw = dict(dataset=pool, primary_ids=split["primary"], model=model, val_ids=split["val"])
    if selector.data_knowledge == "blind":
        kw["non_member_ids"] = split["backup"]
    ids = select_forget_set(selector, **kw)
    assert len(ids) == 24 and len(torch.unique(ids)) == 24
    assert torch.equal(ids, select_forget_set(selector, **kw))
    if selector.data_knowledge != "blind":
        assert torch.isin(ids, split["primary"]).all()


def test_select_forget_set_rejects_bad_budget_and_class(pool, split):
    with pytest.raises(ValueError, match="exceeds the training set"):
        select_forget_set(RandomSelector(budget=1201), dataset=pool, primary_ids=split["primary"])
    with pytest.raises(ValueError, match="outside"):
        select_forget_set(ClassSelector(target_class=12), dataset=pool, primary_ids=split["primary"])


def test_output_aware_selector_without_a_model_raises(pool, split):
    with pytest.raises(ValueError, match="needs the model"):
        select_forget_set(
            WorstLogitsSelector(system_knowledge="output_aware"), dataset=pool, primary_ids=split["primary"]
        )


def test_select_forget_set_sets_progress_and_needs_a_selector(pool, split):
    selector = RandomSelector(budget=5)
    assert selector.progress is False
    select_forget_set(selector, dataset=pool, primary_ids=split["primary"], progress=True)
    assert selector.progress is True
    with pytest.raises(TypeError, match="needs a Selector"):
        select_forget_set({"selector": "random"}, dataset=pool, primary_ids=split["primary"])


# ------------------------------------------------- device and precision


class Float64Pool(DigitsPool):
    """The same pool with its images already in float64."""

    def __init__(self, pool):
        self.data = pool.data.double()
        self.targets = pool.targets


@pytest.fixture(scope="module")
def cnn64():
    """A small CNN converted to float64 (the pool serves float32 images)."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).double()


def float64_grad_norms(model, pool, ids):
    params = list(model.parameters())
    norms = []
    for i in ids.tolist():
        loss = F.cross_entropy(model(pool.data[i : i + 1].double()), pool.targets[i : i + 1])
        norms.append(torch.sqrt(sum(g.square().sum() for g in torch.autograd.grad(loss, params))))
    return torch.stack(norms)


def test_float64_model_on_float32_data_random_class_worst_logits(pool, split, cnn64):
    assert pool.data.dtype == torch.float32
    s = surface(pool, split, "output_aware", model=cnn64)
    logits = s.predict(split["primary"][:5])
    assert logits.dtype == torch.float64 and logits.device.type == "cpu"
    for selector in (RandomSelector(seed=1), ClassSelector(3, seed=1)):
        check_contract(selector.select(s, 20), 20, split["primary"])
    ids = WorstLogitsSelector().select(s, 20)
    primary = torch.sort(split["primary"]).values
    with torch.no_grad():
        out = cnn64(pool.data[primary].double())
    y = pool.targets[primary]
    other = out.clone()
    other[torch.arange(len(y)), y] = -float("inf")
    margins = out[torch.arange(len(y)), y] - other.max(1).values
    assert torch.equal(ids, primary[torch.argsort(margins, stable=True)[:20]])


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_float64_model_on_float32_data_gradient(pool, split, cnn64, engine):
    ids = torch.arange(12)
    norms = per_sample_grad_norms(cnn64, F.cross_entropy, pool.data[ids], pool.targets[ids], engine=engine)
    assert norms.dtype == torch.float64
    torch.testing.assert_close(norms, float64_grad_norms(cnn64, pool, ids), rtol=1e-10, atol=1e-12)

    s = surface(pool, split, "parameter_aware", model=cnn64, val_ids=split["val"])
    ids = GradientSelector(engine=engine, batch_size=500).select(s, 20)
    primary = torch.sort(split["primary"]).values
    expected = primary[torch.argsort(-float64_grad_norms(cnn64, pool, primary), stable=True)[:20]]
    assert torch.equal(ids, expected)

    # influence mode: the same ids as with the images already in float64
    selector = GradientSelector("influence", engine=engine, damping=0.1, scale=50.0, depth=5, batch_size=400)
    ids = selector.select(s, 20)
    check_contract(ids, 20, split["primary"])
    s64 = surface(Float64Pool(pool), split, "parameter_aware", model=cnn64, val_ids=split["val"])
    assert torch.equal(ids, selector.select(s64, 20))
