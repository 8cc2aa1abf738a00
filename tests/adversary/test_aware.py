"""The unlearning-aware adversary on digits with Fisher forgetting: exact greedy, and at least as damaging."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from healing_pl.adversary.selectors import (
    SELECTORS,
    RandomSelector,
    UnlearningAwareSelector,
    WorstLogitsSelector,
    build_surface,
)
from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import Classifier
from healing_pl.phases.forget import select_forget_ids, unlearning_simulator
from healing_pl.unlearning import UNLEARNERS, Context


@pytest.fixture(scope="module")
def fisher():
    """Empirical Fisher (one backward pass per batch): a simulation takes about 0.1 s on digits."""
    return UNLEARNERS["fisher"](alpha=3e-6, fisher_kind="empirical", seed=3, cache_dir=None)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    dm = HealingDataModule("digits", primary=0.6, backup=0.15, val=0.1, batch_size=64, seed=0)
    model = Classifier(num_classes=10, in_chans=1, image_size=8, lr=3e-3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(4):
        for x, y in dm.loader(dm.primary_ids, shuffle=True, batch_size=64, seed=epoch):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval(), dm


def simulated(model, dm, ids, method) -> tuple[int, float]:
    """The objective, computed here on its own: Fisher on the sorted ids with the method's seed, then the
    validation split's correct count and mean cross-entropy, in one batch."""
    out, _ = method.run(model, dm, torch.sort(torch.as_tensor(ids)).values, Context(), method.seed)
    val = dm.splits["val"]
    x = torch.stack([dm.pool.train[i][0] for i in val.tolist()])
    y = dm.targets[val]
    with torch.no_grad():
        logits = out.eval()(x)
    return int((logits.argmax(1) == y).sum()), float(F.cross_entropy(logits, y))


def ranking(model, dm, k: int) -> list[int]:
    surface = build_surface(
        system_knowledge="output_aware",
        data_knowledge="known",
        dataset=dm.pool.train,
        primary_ids=dm.primary_ids,
        model=model,
    )
    return WorstLogitsSelector().select(surface, k).tolist()


def aware(budget: int, **kw) -> UnlearningAwareSelector:
    return UnlearningAwareSelector(system_knowledge="parameter_aware", budget=budget, batch_size=1024, **kw)


def test_registered_with_its_knowledge():
    cls = SELECTORS["unlearning_aware"]
    assert cls is UnlearningAwareSelector
    assert (cls.needs_system, cls.needs_data) == ("parameter_aware", "known")
    assert cls.simulates_unlearning


def test_budget_one_is_the_best_single_sample_of_the_pool(setup, fisher):
    model, dm = setup
    pool = ranking(model, dm, 5)
    picked = select_forget_ids(aware(1, pool=5), model, dm, unlearn=fisher).tolist()
    scores = {c: simulated(model, dm, [c], fisher) for c in pool}
    best = min(pool, key=lambda c: (scores[c][0], -scores[c][1], pool.index(c)))
    assert picked == [best]
    assert len({scores[c] for c in pool}) > 1  # the candidates really differ under the simulation


def test_greedy_equals_brute_force_of_the_simulated_objective(setup, fisher):
    model, dm = setup
    pool = ranking(model, dm, 4)
    picked = select_forget_ids(aware(2, pool=4, block=1), model, dm, unlearn=fisher).tolist()

    def key(ids):
        correct, loss = simulated(model, dm, ids, fisher)
        return correct, -loss

    # every singleton, then every pair that extends the best one: the greedy's two steps, exhaustively
    first = min(pool, key=lambda c: (key([c]), pool.index(c)))
    rest = [c for c in pool if c != first]
    second = min(rest, key=lambda c: (key([first, c]), pool.index(c)))
    expected = [first, second]
    if set(pool[:2]) != set(expected) and key(pool[:2]) < key(expected):  # the ranking's own top 2 is kept
        expected = pool[:2]
    assert picked == expected


def test_block_adds_the_best_singletons_at_once(setup, fisher):
    model, dm = setup
    pool = ranking(model, dm, 4)
    picked = select_forget_ids(aware(2, pool=4, block=2), model, dm, unlearn=fisher).tolist()
    keyed = sorted(((lambda s: (s[0], -s[1]))(simulated(model, dm, [c], fisher)), i, c) for i, c in enumerate(pool))
    expected = [keyed[0][2], keyed[1][2]]
    both = simulated(model, dm, expected, fisher)
    top = simulated(model, dm, pool[:2], fisher)
    if set(pool[:2]) != set(expected) and (top[0], -top[1]) < (both[0], -both[1]):
        expected = pool[:2]
    assert picked == expected


def test_damage_at_least_random_and_worst_logits(setup, fisher):
    model, dm = setup
    budget = 8
    picks = {
        "unlearning_aware": select_forget_ids(aware(budget, pool=24), model, dm, unlearn=fisher),
        "worst_logits": select_forget_ids(
            WorstLogitsSelector(system_knowledge="output_aware", budget=budget), model, dm
        ),
        "random": select_forget_ids(RandomSelector(budget=budget, seed=0), model, dm),
    }
    key = {name: (lambda s: (s[0], -s[1]))(simulated(model, dm, ids, fisher)) for name, ids in picks.items()}
    # fewer correct validation predictions (a larger accuracy drop), and among equals a higher loss
    assert key["unlearning_aware"][0] <= key["worst_logits"][0]
    assert key["unlearning_aware"][0] <= key["random"][0]
    assert key["unlearning_aware"] < key["worst_logits"] and key["unlearning_aware"] < key["random"]


def test_refuses_what_it_cannot_simulate(setup, fisher):
    model, dm = setup
    with pytest.raises(ValueError, match="Fisher or Influence, not for Naive"):
        unlearning_simulator(UNLEARNERS["naive"](cache_dir=None), model, dm)
    with pytest.raises(ValueError, match="needs the unlearn config"):
        select_forget_ids(aware(2), model, dm)
    with pytest.raises(ValueError, match="pool must be a whole number"):
        aware(2, pool=0)
    with pytest.raises(ValueError, match=r"adversary.pool \(3\) must be at least the budget \(5\)"):
        select_forget_ids(aware(5, pool=3), model, dm, unlearn=fisher)
    with pytest.raises(ValueError, match="needs system_knowledge 'parameter_aware'"):
        UnlearningAwareSelector(system_knowledge="output_aware")
