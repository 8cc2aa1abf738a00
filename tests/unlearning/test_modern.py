"""finetune, neggrad_plus, scrub, salun and ssd on whole-class forgetting on digits; finetune (adam) is a
hand-written fine-tune, weight for weight.

The baseline is the digits recipe (small CNN, Adam 3e-3, batch 64, 10 epochs, seed 0); the forget set is every
primary image of class 7 (110), where the gold standard (retrained without them) has forget accuracy 0 and the
baseline 1. Each method runs at the knobs of ``WHOLE_CLASS`` (the reference defaults, or the value chosen on the
validation class 3 by ``healing-pl calibrate --against_gold``); finetune, salun and ssd must move forget accuracy
at least half-way from the baseline's to the gold standard's, with test accuracy within 6 points of the gold
standard's. scrub and neggrad_plus do not at these settings (docs/methods.md says why); for them, and for all, the
input stays untouched and a stochastic method is reproducible by seed.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import evaluate
from healing_pl.unlearning import UNLEARNERS, unlearn_with_repeats
from healing_pl.unlearning.finetune import finetune
from healing_pl.unlearning.naive import train_classifier
from healing_pl.unlearning.salun import saliency_mask

HP = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=3e-3)
TEST_BOUND = 0.06  # test accuracy may fall at most this far below the gold standard's
#: knobs per method: the reference defaults, or the value tuned on validation class 3 against the gold standard;
#: whether forget accuracy must move at least half the baseline-GS gap
WHOLE_CLASS = {
    "finetune": ({"lr": 0.04642}, True),  # tuned on validation (class 3); the default lr 0.01 moves 1%
    "salun": ({}, True),
    "ssd": ({}, True),
    "scrub": ({}, False),
    "neggrad_plus": ({"alpha": 0.999}, False),  # tuned on validation; the default 0.95 collapses the model
}


@pytest.fixture(scope="module")
def setup():
    dm = HealingDataModule("digits", primary=0.6, backup=0.15, val=0.1, batch_size=64, seed=0)
    base = train_classifier(HP, dm, dm.primary_ids, epochs=10, seed=0)
    with torch.no_grad():
        x = torch.stack([dm.pool.train[int(i)][0] for i in dm.primary_ids])
        y = dm.targets[dm.primary_ids]
        logits = base.eval()(x)
        true = logits.gather(1, y[:, None])[:, 0]
        others = logits.scatter(1, y[:, None], float("-inf")).max(1).values
    hardest = dm.primary_ids[(true - others).argsort()[:100]]
    class7 = dm.primary_ids[y == 7]
    gold = train_classifier(HP, dm, dm.remain_ids(class7), epochs=10, seed=0)
    return dm, base, hardest, class7, gold


@pytest.mark.parametrize("method", list(WHOLE_CLASS))
def test_each_method_on_whole_class_forgetting(setup, method):
    dm, base, _, class7, gold = setup
    knobs, moves = WHOLE_CLASS[method]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = unlearn_with_repeats(base, dm, class7, UNLEARNERS[method](cache_dir=None, **knobs))
    forget = dm.loader(class7)
    base_forget, gold_forget = evaluate(base, forget)["acc"], evaluate(gold, forget)["acc"]
    assert (base_forget, gold_forget) == (1.0, 0.0)  # a setting where forgetting is measurable
    forget_acc = evaluate(result.model, forget)["acc"]
    if moves:
        assert forget_acc <= base_forget - (base_forget - gold_forget) / 2, (method, forget_acc)
        assert result.accs[0] >= evaluate(gold, dm.test_dataloader())["acc"] - TEST_BOUND, (method, result.accs)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the input is untouched
    if UNLEARNERS[method].stochastic:  # reproducible by seed
        again = unlearn_with_repeats(base, dm, class7, UNLEARNERS[method](cache_dir=None, **knobs))
        assert all(torch.equal(a, b) for a, b in zip(result.model.parameters(), again.model.parameters()))


def test_finetune_adam_equals_a_hand_written_fine_tune(setup):
    dm, base, hardest, _, _ = setup
    out = finetune(base, dm, hardest, epochs=2, lr=None, optimizer="adam")
    # by hand: Adam at the baseline's lr over the remain set, the datamodule's seeded shuffle, batch 64
    model = copy.deepcopy(base).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=HP["lr"])
    loader = dm.loader(dm.remain_ids(hardest), shuffle=True, batch_size=64)
    for _ in range(2):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    for (name, a), b in zip(out.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(out.net.fc2.weight, base.net.fc2.weight)
    assert out.hparams.lr == base.hparams.lr


def test_salun_parts():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    mask = saliency_mask(model, [(x, y)], 0.5)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    flat = torch.cat([g.abs().flatten() for g in grads])
    kept = torch.cat([m.flatten() for m in mask.values()])
    assert int(kept.sum()) == 7  # int(15 * 0.5): the reference's int(N * ratio)
    assert flat[kept].min() >= flat[~kept].max()


def test_bad_knobs_stop_with_one_sentence():
    with pytest.raises(ValueError, match=r"^unlearn\.msteps must lie in \[0, epochs=2\], got 3\.$"):
        UNLEARNERS["scrub"](epochs=2, msteps=3)
    with pytest.raises(ValueError, match=r"^unlearn\.ratio must lie in \(0, 1\], got 0\.0\.$"):
        UNLEARNERS["salun"](ratio=0.0)
    with pytest.raises(ValueError, match=r"^unlearn\.alpha must lie in \[0, 1\], got 1\.5\.$"):
        UNLEARNERS["neggrad_plus"](alpha=1.5)
    with pytest.raises(ValueError, match=r"^unlearn\.lr must be positive"):
        UNLEARNERS["finetune"](lr=0.0)
    with pytest.raises(TypeError, match="alpha"):  # a knob of another method
        UNLEARNERS["finetune"](alpha=0.5)
