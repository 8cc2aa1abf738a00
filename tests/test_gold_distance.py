"""Distance to the gold standard on the forget set: the forget-accuracy gap and the mean KL(gold || model)."""

from __future__ import annotations

import math

import pytest
import torch

from healing_pl import records as rk
from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import Classifier
from healing_pl.phases.evaluate import Evaluation
from healing_pl.phases.gold import Gold, distance_to_gold, forget_probabilities

HP = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8)


@pytest.fixture(scope="module")
def dm():
    return HealingDataModule("digits", primary=0.6, backup=0.15, val=0.1, seed=0)


def _model(seed: int) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(**HP).double().eval()  # float64: a batch and a single sample agree to rounding


def test_distance_equals_a_per_sample_loop(dm):
    forget = dm.primary_ids[:7]
    gold_model, model = _model(0), _model(1)
    p = forget_probabilities(gold_model, dm, forget)
    assert p.shape == (7, 10) and p.dtype == torch.float64
    gold = Gold(Evaluation(rk.GOLD, 0.9, 0.95, 0.25), time_s=1.0, cached=False, forget_probs=p)
    d = distance_to_gold(model, dm, forget, gold, forget_acc=0.75, prefix=rk.UNLEARNED)
    expected = 0.0
    for i, sid in enumerate(forget.tolist()):  # one sample at a time, straight from the dataset
        x, _ = dm.pool.train[sid]
        with torch.no_grad():
            q = torch.softmax(model(x.unsqueeze(0).double()), dim=1)[0]
        expected += sum(float(p[i, c]) * math.log(float(p[i, c]) / float(q[c])) for c in range(10))
    assert d.kl == pytest.approx(expected / 7, rel=1e-9)
    assert d.gap == pytest.approx(0.75 - 0.25)
    assert d.record() == {"unlearned/forget/gap_gs": d.gap, "unlearned/forget/kl_gs": d.kl}


def test_the_gold_standard_is_at_distance_zero_from_itself_and_none_without_one(dm):
    forget = dm.primary_ids[:5]
    gold_model = _model(0)
    gold = Gold(Evaluation(rk.GOLD, 0.9, 0.95, 0.4), 1.0, False, forget_probabilities(gold_model, dm, forget))
    same = distance_to_gold(gold_model, dm, forget, gold, forget_acc=0.4, prefix=rk.HEALED)
    assert same.kl == pytest.approx(0.0, abs=1e-12) and same.gap == 0.0
    assert distance_to_gold(gold_model, dm, forget, None, forget_acc=0.4, prefix=rk.HEALED) is None
