"""The membership attack on a mislabelled forget set (the data-cleaning setting, ``data.mislabel``).

Digits, 30% primary (539 samples) of which 60 carry a wrong label; the baseline memorises them, the gold standard is
retrained without them. The non-members are held-out images of the forget samples' true classes scored against the
same wrong labels, so the two sides differ only in membership: the baseline's AUC is far above 0.5 and the gold
standard's interval contains 0.5. Scored against their correct labels (class matching alone), the held-out images
make the gold standard look like the strongest member of all (AUC 1.0): the attack would measure the wrong label.
"""

import pytest
import torch

from healing_pl.callbacks.phases import forget_mia
from healing_pl.data.datamodule import HealingDataModule
from healing_pl.phases.mia import draw_heldout_matched, draw_heldout_relabelled, mia, mislabelled_forget_set
from healing_pl.unlearning.naive import train_classifier

HP = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=3e-3)


@pytest.fixture(scope="module")
def mislabelled():
    dm = HealingDataModule("digits", primary=0.3, backup=0.1, val=0.1, batch_size=64, seed=0, mislabel=60)
    return dm, dm.mislabelled_ids


def test_the_relabelled_heldout_side_has_the_forget_sets_true_classes_and_wrong_labels(mislabelled):
    dm, forget = mislabelled
    assert mislabelled_forget_set(dm, forget) and not mislabelled_forget_set(dm, dm.remain_ids(forget)[:10])
    truth, labels = dm.true_targets, dm.targets
    assert (truth[forget] != labels[forget]).all() and torch.equal(
        truth[dm.remain_ids(forget)], labels[dm.remain_ids(forget)]
    )
    kept, held, assigned = draw_heldout_relabelled(dm, forget, seed=3)
    assert torch.isin(held, dm.splits["test"]).all() and held.unique().numel() == held.numel()
    assert torch.isin(kept, forget).all() and kept.unique().numel() == kept.numel() == held.numel()
    # pair by pair: the held-out image has the kept forget sample's true class and is scored on its wrong label
    assert torch.equal(truth[held], truth[kept]) and torch.equal(assigned, labels[kept])
    assert (assigned != truth[held]).all()
    assert torch.equal(draw_heldout_relabelled(dm, forget, seed=3)[1], held)  # seeded


def test_the_attack_tells_the_baseline_from_the_gold_standard_on_mislabelled_samples(mislabelled):
    dm, forget = mislabelled
    baseline = train_classifier(HP, dm, dm.primary_ids, epochs=30, seed=0)
    gold = train_classifier(HP, dm, dm.remain_ids(forget), epochs=30, seed=0)
    on, off = mia(baseline, dm, forget, seed=0, matched=True), mia(gold, dm, forget, seed=0, matched=True)
    assert on["n"] == off["n"] == 60
    recorded = forget_mia(baseline, dm, forget, "baseline", 0)  # what a heal or unlearn run records
    assert (recorded.auc, recorded.n, recorded.interval) == (on["auc"], 60, (on["auc_low"], on["auc_high"]))
    assert on["auc_low"] > 0.75, on  # measured 0.921 [0.870, 0.972]
    assert off["auc_low"] < 0.5 < off["auc_high"], off  # measured 0.557 [0.454, 0.660]
    # class matching alone scores the held-out images on their correct labels: the gold standard, which never saw
    # the wrong labels, then looks like a member (its forget losses are the high ones)
    by_class = mia(gold, dm, forget, heldout_ids=draw_heldout_matched(dm, forget, 0), seed=0, matched=True)
    assert by_class["auc"] > 0.95 and by_class["forget_loss"] > by_class["heldout_loss"]
