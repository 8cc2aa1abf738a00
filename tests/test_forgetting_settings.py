"""Settings where forgetting is measurable: mislabelled training samples (data.mislabel) and the selector that
names them, and a whole class (ClassSelector.class_fraction)."""

from __future__ import annotations

import pytest
import torch

from healing_pl.adversary.selectors import MislabelledSelector, build_surface
from healing_pl.data.datamodule import HealingDataModule

SPLITS = dict(primary=0.6, backup=0.15, val=0.1, seed=0)


@pytest.fixture(scope="module")
def dms():
    return HealingDataModule("digits", **SPLITS), HealingDataModule("digits", mislabel=40, **SPLITS)


def test_mislabel_changes_exactly_the_named_labels_and_nothing_else(dms):
    clean, dirty = dms
    ids = dirty.mislabelled_ids
    assert ids.numel() == 40 and bool(torch.isin(ids, dirty.primary_ids).all()) and ids.tolist() == sorted(ids.tolist())
    for name in clean.splits:  # the splits are the clean module's
        assert torch.equal(clean.splits[name], dirty.splits[name])
    changed = torch.nonzero(clean.targets != dirty.targets).reshape(-1)
    assert torch.equal(changed, ids)
    for i in [*ids[:5].tolist(), int(dirty.backup_ids[0])]:  # the loader's labels are the targets
        x_clean, _ = clean.pool.train[i]
        x, y = dirty.pool.train[i]
        assert y == int(dirty.targets[i]) and torch.equal(x, x_clean)
    assert dirty.pool.train.mean == clean.pool.train.mean  # the dataset's own attributes pass through
    again = HealingDataModule("digits", mislabel=40, **SPLITS)
    assert torch.equal(again.mislabelled_ids, ids) and torch.equal(again.targets, dirty.targets)


def test_mislabel_outside_the_primary_set_size_stops_with_one_sentence():
    with pytest.raises(ValueError, match=r"^data.mislabel must lie in \[0, \d+\]"):
        HealingDataModule("digits", mislabel=10**6, **SPLITS)


def test_the_selector_names_only_mislabelled_samples(dms):
    _, dirty = dms
    surface = build_surface(
        system_knowledge="blind", data_knowledge="known", dataset=dirty.pool.train, primary_ids=dirty.primary_ids
    )
    chosen = MislabelledSelector(budget=25, seed=3)._choose(surface, 25)
    assert len(chosen) == 25 and bool(torch.isin(chosen, dirty.mislabelled_ids).all())
    assert len(set(chosen.tolist())) == 25
    with pytest.raises(ValueError, match="holds 40 mislabelled samples .* fewer than the budget of 41"):
        MislabelledSelector(budget=41, seed=3)._choose(surface, 41)
    clean_surface = build_surface(
        system_knowledge="blind", data_knowledge="known", dataset=dms[0].pool.train, primary_ids=dirty.primary_ids
    )
    assert clean_surface.mislabelled_ids.numel() == 0


def test_a_class_fraction_of_one_forgets_the_whole_class(dms):
    from healing_pl.adversary.selectors import ClassSelector, select_forget_set

    clean, _ = dms
    ds, primary = clean.pool.train, clean.primary_ids
    of_class = primary[clean.targets[primary] == 3]
    whole = select_forget_set(ClassSelector(target_class=3, class_fraction=1.0), dataset=ds, primary_ids=primary)
    assert sorted(whole.tolist()) == sorted(of_class.tolist())
    part = select_forget_set(ClassSelector(target_class=3, class_fraction=0.5), dataset=ds, primary_ids=primary)
    assert len(part) == int(0.5 * len(of_class) + 0.5) and bool(torch.isin(part, of_class).all())
    with pytest.raises(ValueError, match=r"^adversary.class_fraction must lie in \(0, 1\], got 1.5\.$"):
        ClassSelector(target_class=3, class_fraction=1.5)


def test_a_heal_on_the_twins_plus_a_tenth_of_r(in_tmp, configs_dir, digits_baseline):
    """heal.remain_fraction 0.1: the heal set is the twins plus a seeded 10% of R (heal/train_size)."""
    import json

    from healing_pl.main import main

    run = in_tmp / "heal"
    args = ["heal", "--config", f"{configs_dir}/digits.yaml", f"--ckpt_path={digits_baseline}", f"--run_dir={run}"]
    args += ["--adversary=ClassSelector", "--adversary.target_class=3", "--adversary.budget=10", "--heal.epochs=1"]
    args += ["--heal.remain_fraction=0.1", "--heal.gold=false", "--unlearn.alpha=1e-8", "--twins.metric=RawL2"]
    assert main([*args, "--trainer.enable_progress_bar=false", "--wandb.enabled=false"]) == 0
    record = json.loads((run / "results.json").read_text())
    dm = HealingDataModule("digits", **SPLITS)
    remain = dm.primary_ids.numel() - 10
    assert record["heal/remain_fraction"] == 0.1
    assert record["heal/train_size"] == int(0.1 * remain + 0.5) + 10
