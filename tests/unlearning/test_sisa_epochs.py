"""SISA epochs per slice stage: the passes rule (ceil(2N/(R+1))), the former per_slice rule, the config option,
its cache key, and a shard trained under the rule against an independent from-scratch loop of that schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import Classifier
from healing_pl.unlearning import UNLEARNERS, Context
from healing_pl.unlearning.sisa import EPOCH_RULES, make_assignment, seed_for, slice_epochs, train_sisa

HP = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=1e-2)


@pytest.fixture(scope="module")
def dm():
    return HealingDataModule("digits", seed=0)


def test_the_paper_grid_under_both_rules():
    # the paper's N = 10 (MNIST), 5 (CIFAR-10), 3 (AFHQ) with R = 5 slices
    assert [slice_epochs(n, 5) for n in (10, 5, 3)] == [4, 2, 1]
    assert [slice_epochs(n, 5, "passes") for n in (10, 5, 3)] == [4, 2, 1]
    assert [slice_epochs(n, 5, "per_slice") for n in (10, 5, 3)] == [2, 1, 1]
    assert slice_epochs(10, 5, 7) == 7 and slice_epochs(10, 1) == 10 and slice_epochs(1, 9) == 1
    assert EPOCH_RULES == ("passes", "per_slice")


@pytest.mark.parametrize("slices", range(1, 11))
def test_passes_is_the_fewest_whole_epochs_giving_every_sample_the_baselines_passes_on_average(slices):
    for epochs in range(1, 31):
        e = slice_epochs(epochs, slices)
        # stage r trains on slices 0..r: a sample of slice j is trained on in stages j..R-1
        passes = sum(e * (slices - j) for j in range(slices)) / slices
        assert passes == pytest.approx(e * (slices + 1) / 2)
        assert passes >= epochs and (e == 1 or (e - 1) * (slices + 1) / 2 < epochs), (epochs, slices, e)
        assert e == math.ceil(2 * epochs / (slices + 1))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("all", "unknown SISA epoch rule 'all'"),
        (0, "epochs_per_slice must be at least 1, got 0"),
        (True, "must be one of passes, per_slice or a count, got True"),
        (2.5, "must be one of passes, per_slice or a count, got 2.5"),
    ],
)
def test_bad_rules_stop_with_one_sentence(rule, message):
    with pytest.raises(ValueError, match=message):
        slice_epochs(10, 5, rule)
    with pytest.raises(ValueError, match="epochs must be at least 1, got 0"):
        slice_epochs(0, 5)


def test_the_config_option_defaults_to_passes_and_keys_the_cache(dm, tmp_path):
    sisa = UNLEARNERS["sisa"]
    cfg = sisa(cache_dir=str(tmp_path))
    assert cfg.epochs_per_slice == "passes" and cfg.hyperparameters()["epochs_per_slice"] == "passes"
    assert "epochs_per_slice" in sisa.knob_names()
    model, context = Classifier(**HP), Context(epochs=10, seed=0)
    directory = {
        rule: sisa(epochs_per_slice=rule, cache_dir=str(tmp_path)).directory(model, dm, context)
        for rule in ("passes", "per_slice", 4, 2)
    }
    # the key holds the resolved count: passes = 4 and per_slice = 2 epochs per stage for N = 10, R = 5
    assert directory["passes"] == directory[4] and directory["per_slice"] == directory[2]
    assert directory["passes"] != directory["per_slice"]
    assert slice_epochs(11, 5) == 4  # N = 11 trains 4 epochs per stage too, but the baseline's N is keyed as well
    assert cfg.directory(model, dm, Context(epochs=11, seed=0)) != directory["passes"]


def _from_scratch(dm, slices: list[torch.Tensor], shard: int, *, seed: int, epochs: int, batch_size: int):
    """An independent loop of the documented schedule: seeded initial weights, one Adam for the whole shard,
    stage r trains ``epochs`` epochs on slices 0..r shuffled by a generator (and dropout) seeded per stage.
    Returns the model and the sample passes it made."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for("init", seed, shard))
        model = Classifier(**HP)
    optimizer = torch.optim.Adam(model.parameters(), lr=HP["lr"], weight_decay=0.0)
    passes = 0
    model.train()
    for r in range(len(slices)):
        stage_seed = seed_for("stage", seed, shard, r)
        loader = dm.loader(torch.cat(slices[: r + 1]), shuffle=True, batch_size=batch_size, seed=stage_seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stage_seed)
            for _ in range(epochs):
                for x, y in loader:
                    loss = F.cross_entropy(model(x.float()), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    passes += len(y)
    return model.eval(), passes


@pytest.mark.parametrize(("rule", "per_stage"), [("passes", 2), ("per_slice", 1)])
def test_a_shard_trained_under_the_rule_equals_training_that_schedule_from_scratch(dm, rule, per_stage):
    # N = 4 baseline epochs, R = 3 slices: passes gives ceil(8 / 4) = 2 epochs per stage, per_slice round(4/3) = 1
    epochs, seed, batch = 4, 2, 16
    assignment = [[sl[:24] for sl in sh] for sh in make_assignment(dm.primary_ids, 2, 3, seed)]
    state = train_sisa(HP, dm, epochs=epochs, epochs_per_slice=rule, seed=seed, assignment=assignment, batch_size=batch)
    assert state.epochs_per_slice == per_stage
    for s in range(2):
        ref, passes = _from_scratch(dm, assignment[s], s, seed=seed, epochs=per_stage, batch_size=batch)
        got = state.ensemble.models[s]
        assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), ref.state_dict().values(), strict=True))
        shard = sum(sl.numel() for sl in assignment[s])
        # passes: every sample trained on exactly the baseline's 4 times on average; per_slice: half of it
        assert passes == {"passes": epochs * shard, "per_slice": epochs * shard // 2}[rule]
