"""The class-matched membership attack: held-out images with the forget set's class histogram, the AUC's interval,
and the population attack beside it.

Digits (test split in the pool). The draws are checked by counting classes; the interval against Hanley and
McNeil's formula written out; the population attack by its sizes and by the record the phase writes.
"""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import Classifier
from healing_pl.phases.mia import (
    auc_interval,
    draw_heldout_matched,
    heldout_split,
    match_classes,
    mia,
    mia_efficacy,
    mia_phase,
    population_mia,
)


@pytest.fixture(scope="module")
def dm():
    return HealingDataModule("digits", primary=0.6, backup=0.15, val=0.1, batch_size=64, seed=0)


def _forget(dm, wanted: dict[int, int]) -> torch.Tensor:
    y = dm.targets[dm.primary_ids]
    return torch.cat([dm.primary_ids[y == c][:k] for c, k in wanted.items()])


def test_matched_draws_have_the_forget_sets_class_histogram(dm):
    forget = _forget(dm, {1: 5, 4: 3, 9: 7})
    held = draw_heldout_matched(dm, forget, seed=0)
    assert Counter(dm.targets[held].tolist()) == Counter({1: 5, 4: 3, 9: 7})
    assert heldout_split(dm) == "test" and torch.isin(held, dm.splits["test"]).all()
    assert held.unique().numel() == held.numel()
    assert torch.equal(held, draw_heldout_matched(dm, forget, seed=0))
    assert not torch.equal(held, draw_heldout_matched(dm, forget, seed=1))
    assert torch.equal(match_classes(dm, forget, held), forget)  # no class short: the forget set is kept whole


def test_a_short_class_draws_all_it_has_and_the_forget_set_is_matched_down(dm):
    test_twos = int((dm.targets[dm.splits["test"]] == 2).sum())
    forget = _forget(dm, {2: test_twos + 10, 5: 4})
    held = draw_heldout_matched(dm, forget, seed=0)
    assert Counter(dm.targets[held].tolist()) == Counter({2: test_twos, 5: 4})
    kept = match_classes(dm, forget, held, seed=0)
    assert Counter(dm.targets[kept].tolist()) == Counter(dm.targets[held].tolist())
    assert torch.isin(kept, forget).all()


def test_auc_interval_is_hanley_mcneil():
    for a, n1, n2 in ((0.5, 10, 10), (0.8, 25, 40), (0.95, 100, 100)):
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        se = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2))
        low, high = auc_interval(a, n1, n2)
        assert low == pytest.approx(max(0, a - 1.959964 * se)) and high == pytest.approx(min(1, a + 1.959964 * se))
    assert auc_interval(0.5, 10, 10) == pytest.approx(
        (0.5 - 1.959964 * math.sqrt(0.0175), 0.5 + 1.959964 * math.sqrt(0.0175))
    )


def test_population_attack_is_the_remain_set_against_the_whole_heldout_split(dm):
    torch.manual_seed(0)
    model = Classifier(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=3e-3).eval()
    forget = _forget(dm, {7: 20})
    pop = population_mia(model, dm, forget, seed=0)
    assert pop["n"] == min(len(dm.remain_ids(forget)), dm.splits["test"].numel())
    assert pop["auc_low"] <= pop["auc"] <= pop["auc_high"]
    # the phase records the matched attack, its interval and the population attack together
    result = mia_phase(model, dm, forget, "baseline", seed=0)
    record = result.record()
    assert record["mia/class_matched"] is True and record["mia/n"] == 20
    assert record["baseline/mia_population/auc"] == pop["auc"] and record["mia_population/n"] == pop["n"]
    assert record["baseline/mia/auc_low"] <= record["baseline/mia/auc"] <= record["baseline/mia/auc_high"]
    assert mia(model, dm, forget, seed=0, matched=True)["auc"] == record["baseline/mia/auc"]
    assert record["baseline/mia_efficacy"] == mia_efficacy(model, dm, forget, seed=0)
    # an untrained model has no membership signal: its population AUC is near chance
    assert abs(pop["auc"] - 0.5) < 0.1
    assert np.isfinite(pop["acc"])


@pytest.mark.slow
def test_whole_class_forgetting_baseline_vs_gold_standard(dm):
    """Class 7 forgotten whole (110 images; 31 class-7 test images to match): the class-matched attack tells the
    baseline (trained on them) from the gold standard (never saw the class); unmatched, the gold standard looks like
    a member-rich model because its class-7 losses are high against other classes' (the class confound)."""
    from healing_pl.unlearning.naive import train_classifier

    hp = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=3e-3)
    forget = dm.primary_ids[dm.targets[dm.primary_ids] == 7]
    base = train_classifier(hp, dm, dm.primary_ids, epochs=10, seed=0)
    gold = train_classifier(hp, dm, dm.remain_ids(forget), epochs=10, seed=0)
    b, g = mia(base, dm, forget, seed=0, matched=True), mia(gold, dm, forget, seed=0, matched=True)
    assert b["n"] == g["n"] == int((dm.targets[dm.splits["test"]] == 7).sum()) == 31
    assert b["auc_low"] > 0.5 and b["auc"] - g["auc"] > 0.15, (b, g)
    assert g["auc_low"] < 0.5  # the gold standard: no membership signal
    unmatched = mia(gold, dm, forget, seed=0, matched=False)
    assert unmatched["auc_low"] > 0.85, unmatched
    # SalUn's MIA-efficacy: the gold standard's forget images look like non-members, the baseline's do not
    assert mia_efficacy(gold, dm, forget) > 0.9 > 0.5 > mia_efficacy(base, dm, forget)


def test_mia_efficacy_is_salun_s_confidence_svm(dm):
    from sklearn.svm import SVC

    torch.manual_seed(1)
    model = Classifier(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=3e-3).eval()
    forget = _forget(dm, {2: 15, 6: 15})

    def confidence(ids):  # softmax probability of the true label, written out
        x = torch.stack([dm.pool.train[int(i)][0] for i in ids])
        with torch.no_grad():
            p = torch.softmax(model(x).double(), 1)
        return p[torch.arange(len(ids)), dm.targets[ids]].numpy()

    remain, test = dm.remain_ids(forget), dm.splits["test"]
    members = remain[torch.as_tensor(np.random.default_rng(0).permutation(remain.numel())[: test.numel()])]
    x = np.concatenate([confidence(members), confidence(test)]).reshape(-1, 1)
    y = np.r_[np.ones(len(members)), np.zeros(len(test))]
    svm = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    expected = 1 - svm.predict(confidence(forget).reshape(-1, 1)).mean()
    assert mia_efficacy(model, dm, forget, seed=0) == pytest.approx(expected, abs=1e-12)
