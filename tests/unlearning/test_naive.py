"""Naive unlearning (the gold standard) and the repeats machinery behind every method."""

import sys
import time

import lightning as L
import pytest
import torch

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import Classifier, evaluate
from healing_pl.unlearning import make_unlearner, unlearn_with_repeats
from healing_pl.unlearning.naive import gold_key, gold_standard, naive_unlearn

HP = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=3e-3)


@pytest.fixture(scope="module")
def dm():
    return HealingDataModule("digits", batch_size=128, seed=0)


def test_naive_equals_fit_on_the_remain_set(dm, tmp_path):
    forget = dm.primary_ids[:20]
    gold = naive_unlearn(Classifier(**HP), dm, forget, epochs=2, seed=7, cache_dir=str(tmp_path))
    # an independent fit on R with the same seed, as `healing-pl fit` would do
    L.seed_everything(7, verbose=False)
    reference = Classifier(**HP)
    remain_dm = HealingDataModule("digits", batch_size=128, seed=0)
    remain_dm.set_train_ids(remain_dm.remain_ids(forget))
    L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    ).fit(reference, datamodule=remain_dm)
    for (name, a), b in zip(gold.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    # and it differs from a model that also saw the forget set
    L.seed_everything(7, verbose=False)
    full = Classifier(**HP)
    L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    ).fit(full, datamodule=HealingDataModule("digits", batch_size=128))
    assert not torch.equal(full.net.fc2.weight, gold.net.fc2.weight)


def test_gold_standard_is_cached_by_content(dm, tmp_path):
    forget = dm.primary_ids[5:15]
    first, info1 = gold_standard(HP, dm, forget, epochs=1, seed=0, cache_dir=str(tmp_path))
    second, info2 = gold_standard(HP, dm, forget.flip(0), epochs=1, seed=0, cache_dir=str(tmp_path))
    assert (info1["cached"], info2["cached"]) == (False, True) and info1["key"] == info2["key"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    # anything that changes the result changes the key
    base = gold_key(HP, dm, forget, epochs=1, seed=0)
    assert gold_key(HP, dm, forget, epochs=2, seed=0) != base
    assert gold_key(HP, dm, forget, epochs=1, seed=1) != base
    assert gold_key({**HP, "lr": 1e-3}, dm, forget, epochs=1, seed=0) != base
    assert gold_key(HP, dm, forget[1:], epochs=1, seed=0) != base


def test_repeats_keep_the_run_closest_to_the_mean_validation_accuracy(dm):
    torch.manual_seed(0)
    model = Classifier(**HP)
    cfg = make_unlearner("fisher", alpha=1e-3, repeats=4, cache_dir=None)
    result = unlearn_with_repeats(model, dm, dm.primary_ids[:10], cfg)
    assert len(result.accs) == len(result.val_accs) == 4 and len(set(result.val_accs)) > 1  # different noise
    mean = sum(result.val_accs) / 4
    best = min(range(4), key=lambda i: (abs(result.val_accs[i] - mean), i))  # ties: the first
    assert result.representative == best
    # the kept model is that repeat's: its validation and test accuracy are the ones recorded for it
    assert evaluate(result.model, dm.val_dataloader())["acc"] == result.val_accs[best]
    assert evaluate(result.model, dm.test_dataloader())["acc"] == result.accs[best]
    again = unlearn_with_repeats(model, dm, dm.primary_ids[:10], cfg)
    assert (again.accs, again.val_accs, again.representative) == (result.accs, result.val_accs, best)  # by seed


def test_fisher_repeats_share_the_starts_fisher_and_equal_separate_runs(dm, monkeypatch):
    # the repeats of one start compute its Fisher once, and each gives the model a run of its seed alone gives
    import healing_pl.unlearning.fisher as fisher_module
    from healing_pl.unlearning import Context

    computed = []
    real = fisher_module.diagonal_fisher_and_count

    def counting(*args, **kwargs):
        computed.append(1)
        time.sleep(0.3)  # a Fisher that takes at least 0.3 s
        return real(*args, **kwargs)

    monkeypatch.setattr(fisher_module, "diagonal_fisher_and_count", counting)
    torch.manual_seed(0)
    model = Classifier(**HP)
    forget = dm.primary_ids[:10]
    cfg = make_unlearner("fisher", alpha=1e-3, repeats=3, cache_dir=None, seed=5)
    result = unlearn_with_repeats(model, dm, forget, cfg)
    assert len(computed) == 1
    alone, _ = cfg.run(model, dm, forget, Context(), 5 + result.representative)  # no shared start
    assert len(computed) == 2
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), alone.state_dict().values()))
    # each repeat's time is the cost of one unlearning: the reused Fisher's seconds are counted in every repeat
    assert min(result.times) >= 0.3


def test_test_accuracy_never_chooses_the_representative(dm, monkeypatch):
    """Validation and test accuracy point at different repeats: the validation one is kept."""
    val = [0.5, 0.9, 0.7, 0.6]  # mean 0.675: repeat 2 (0.7) is closest
    test = [0.8, 0.2, 0.1, 0.5]  # mean 0.4: a choice on test accuracy would keep repeat 3 (0.5)
    test_loader, evaluated = object(), []  # evaluated: each repeat's model, in order

    def scripted(model, loader):
        if loader is test_loader:
            return {"acc": test[len(evaluated) - 1]}
        evaluated.append(model)
        return {"acc": val[len(evaluated) - 1]}

    monkeypatch.setattr(sys.modules[unlearn_with_repeats.__module__], "evaluate", scripted)
    cfg = make_unlearner("fisher", alpha=1e-3, repeats=4, cache_dir=None)
    result = unlearn_with_repeats(Classifier(**HP), dm, dm.primary_ids[:10], cfg, test_loader=test_loader)
    assert (result.val_accs, result.accs) == (val, test)
    assert result.representative == 2 and result.model is evaluated[2]


@pytest.mark.parametrize(
    "forget, words",
    [
        (lambda dm: dm.backup_ids[:3], "outside the primary set"),
        (lambda dm: dm.primary_ids[[1, 1]], "twice"),
        (lambda dm: dm.primary_ids[:0], "empty"),
        (lambda dm: dm.primary_ids, "whole primary set"),
    ],
)
def test_bad_forget_sets_stop_with_a_sentence(dm, forget, words):
    with pytest.raises(ValueError, match=words):
        unlearn_with_repeats(Classifier(**HP), dm, forget(dm), make_unlearner("fisher", cache_dir=None))


def test_unknown_method_and_bad_knobs():
    with pytest.raises(ValueError, match="unknown unlearning method 'fishr'"):
        make_unlearner("fishr")
    with pytest.raises(ValueError, match="scale must be positive"):
        make_unlearner("influence", scale=0)


def test_a_gold_standard_being_computed_elsewhere_is_waited_for_then_loaded(dm, tmp_path):
    """Two jobs of a grid on one seed need the same GS: the second waits on the entry's lock and loads what the
    first wrote, instead of training it again."""
    import shutil
    import threading

    from healing_pl.lock import compute_once

    forget = dm.primary_ids[5:15]
    key = gold_key(HP, dm, forget, epochs=1, seed=0)
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    got = {}
    with compute_once(str(shared / f"gold-{key}.pt")):  # the first job, computing
        waiting = threading.Thread(
            target=lambda: got.update(
                zip(("model", "info"), gold_standard(HP, dm, forget, epochs=1, seed=0, cache_dir=str(shared)))
            )
        )
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not got  # blocked on the lock, not training its own
        model, _ = gold_standard(HP, dm, forget, epochs=1, seed=0, cache_dir=str(elsewhere))
        shutil.copy(elsewhere / f"gold-{key}.pt", shared / f"gold-{key}.pt")
    waiting.join(timeout=60)
    assert got["info"]["cached"] is True
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), got["model"].state_dict().values()))


def test_compute_once_lets_one_of_several_processes_compute(tmp_path):
    import multiprocessing
    import os
    import time

    from healing_pl.lock import compute_once

    entry, log = tmp_path / "entry", tmp_path / "log"

    def job():
        with compute_once(str(entry)):
            if not entry.exists():
                with open(log, "a") as f:
                    f.write("computed\n")
                time.sleep(0.3)
                entry.write_text("x")
        os._exit(0)

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=job) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0, 0] and log.read_text() == "computed\n"
