"""Loss-based membership inference: it tells a model trained on the forget set from the gold standard.

Digits with a small primary set (20%: 358 samples, the regime where a model memorises), half of it the forget
set (179 samples), 30 epochs; held-out samples from the test split. The model trained on F must score an AUC at
least 0.08 above the gold standard's (retrained without F), whose AUC stays near chance.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.phases.mia import attack, draw_heldout, mia, mia_twins, sample_losses
from healing_pl.unlearning.naive import train_classifier

HP = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=3e-3)


@pytest.fixture(scope="module")
def models():
    dm = HealingDataModule("digits", primary=0.2, backup=0.15, val=0.1, batch_size=64, seed=0)
    forget = dm.primary_ids[: len(dm.primary_ids) // 2]
    trained = train_classifier(HP, dm, dm.primary_ids, epochs=30, seed=0)
    gold = train_classifier(HP, dm, dm.remain_ids(forget), epochs=30, seed=0)
    return dm, forget, trained, gold


def test_mia_separates_a_model_trained_on_the_forget_set_from_the_gold_standard(models):
    dm, forget, trained, gold = models
    on_f, without_f = mia(trained, dm, forget, seed=0), mia(gold, dm, forget, seed=0)
    assert on_f["n"] == without_f["n"] == len(forget) == 179
    assert on_f["auc"] > 0.56 and on_f["auc"] - without_f["auc"] > 0.08, (on_f, without_f)
    assert abs(without_f["auc"] - 0.5) < 0.06
    assert on_f["forget_loss"] < on_f["heldout_loss"]
    assert mia(trained, dm, forget, seed=0) == on_f  # reproducible


def test_heldout_comes_from_the_test_split_and_is_checked(models):
    dm, forget, trained, _ = models
    held = draw_heldout(dm, 50, seed=1)
    assert len(held) == 50 and torch.isin(held, dm.splits["test"]).all()
    assert torch.equal(held, draw_heldout(dm, 50, seed=1))
    with pytest.raises(ValueError, match="outside the primary set"):
        mia(trained, dm, forget, heldout_ids=dm.primary_ids[-20:])
    trained.train()
    losses = sample_losses(trained, dm, forget[:7])
    assert losses.shape == (7,) and trained.training  # computed in eval mode, and the model's mode restored
    samples = dm.subset(forget[:7])
    x = torch.stack([samples[i][0] for i in range(7)])
    y = torch.tensor([int(samples[i][1]) for i in range(7)])
    with torch.no_grad():
        by_hand = F.cross_entropy(trained.eval()(x), y, reduction="none").double().numpy()
    np.testing.assert_allclose(losses, by_hand, rtol=1e-5, atol=1e-7)  # one loss per sample, in the ids' order
    np.testing.assert_array_equal(sample_losses(trained, dm, forget[:7].flip(0)), losses[::-1])


def test_attack_on_known_losses():
    rng = np.random.default_rng(0)
    separated = attack(rng.uniform(0, 1, 100), rng.uniform(2, 3, 100), seed=0)
    assert separated["auc"] == 1.0 and separated["acc"] == 1.0
    same = attack(rng.uniform(0, 1, 200), rng.uniform(0, 1, 400), seed=0)
    assert same["n"] == 200 and abs(same["auc"] - 0.5) < 0.1
    with pytest.raises(ValueError, match="at least 5 samples"):
        attack(np.zeros(3), np.ones(3))


@pytest.mark.parametrize("seed", range(6))
def test_attack_is_sklearns_cross_validated_logistic_regression(seed):
    # the attack computes, fold by fold, exactly what cross_validate's roc_auc and accuracy scorers give
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_validate

    rng = np.random.default_rng(seed)
    members, nonmembers = rng.exponential(0.2, 150 + 10 * seed), rng.exponential(0.5, 150)
    got = attack(members, nonmembers, seed=seed)
    n = 150
    kept = members[np.random.default_rng(seed).permutation(len(members))[:n]] if len(members) > n else members
    features = np.concatenate([kept, nonmembers]).reshape(-1, 1)
    labels = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_validate(LogisticRegression(), features, labels, cv=folds, scoring=("roc_auc", "accuracy"))
    assert got["auc"] == float(scores["test_roc_auc"].mean()) and got["acc"] == float(scores["test_accuracy"].mean())
    assert got["n"] == n and 0.5 < got["auc"] < 1.0


def test_mia_twins(models):
    dm, forget, trained, gold = models
    twins = dm.backup_ids[:100]
    out = mia_twins(trained, dm, forget, twins, seed=0)
    # the twins (sorted, each once) are the members, the forget set the non-members
    twin_losses, forget_losses = sample_losses(trained, dm, twins.unique()), sample_losses(trained, dm, forget)
    assert out == {
        **attack(twin_losses, forget_losses, seed=0),
        "forget_loss": float(forget_losses.mean()),
        "twin_loss": float(twin_losses.mean()),
    }
    assert out["n"] == 100 and out["forget_loss"] < out["twin_loss"]  # trained on F, never on the twins
    assert mia_twins(trained, dm, forget, torch.cat([twins, twins[:10]]), seed=0) == out  # a repeated twin counts once
    with pytest.raises(ValueError, match="needs twins"):
        mia_twins(trained, dm, forget, [], seed=0)
