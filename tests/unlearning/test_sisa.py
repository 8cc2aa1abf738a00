"""SISA: assignment, exact unlearning against from-scratch retraining, aggregation, bad input."""

import copy

import pytest
import torch
from torch import nn

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import evaluate
from healing_pl.unlearning.sisa import (
    SisaEnsemble,
    aggregate,
    make_assignment,
    seed_for,
    train_sisa,
    unlearn_sisa,
)

HP = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=1e-2)
RECIPE = dict(shards=3, slices=3, epochs_per_slice=1, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def dm():
    return HealingDataModule("digits", seed=0)


@pytest.fixture(scope="module")
def state(dm):
    return train_sisa(HP, dm, **RECIPE)


def params(model):
    return [p.detach() for p in model.parameters()]


def flat_state(opt_state):
    """An optimizer state dict as comparable nested lists (tensors to lists)."""
    return {k: {n: v.tolist() for n, v in st.items()} for k, st in opt_state["state"].items()}


def same_params(a, b):
    return all(torch.equal(x, y) for x, y in zip(params(a), params(b), strict=True))


# ------------------------------------------------------------- assignment
def test_shards_and_slices_partition_the_primary_set(dm, state):
    assert len(state.assignment) == 3 and all(len(sh) == 3 for sh in state.assignment)
    all_ids = state.ids
    assert all_ids.numel() == dm.primary_ids.numel() == all_ids.unique().numel()
    assert torch.equal(all_ids.sort().values, dm.primary_ids.sort().values)
    n = dm.primary_ids.numel()
    sizes = [state.shard_ids(s).numel() for s in range(3)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    for sh in state.assignment:
        slice_sizes = [sl.numel() for sl in sh]
        assert max(slice_sizes) - min(slice_sizes) <= 1
        ids = torch.cat(sh)
        assert ids.unique().numel() == ids.numel()
    # seeded: same seed, same assignment; another seed, another one
    again = make_assignment(dm.primary_ids, 3, 3, seed=0)
    assert all(torch.equal(a, b) for sa, sb in zip(again, state.assignment) for a, b in zip(sa, sb))
    other = make_assignment(dm.primary_ids, 3, 3, seed=1)
    assert not torch.equal(other[0][0], again[0][0])
    assert len(state.checkpoints) == 3 and all(len(c) == 4 for c in state.checkpoints)
    assert state.train_time > 0 and len(state.shard_times) == 3


def test_seeds_are_stable_and_distinct():
    assert seed_for("stage", 0, 1, 2) == seed_for("stage", 0, 1, 2) != seed_for("stage", 0, 2, 1)


# ------------------------------------------------------------- unlearning
def test_unlearning_equals_retraining_the_affected_shards_from_scratch(dm, state):
    a = state.assignment
    # two ids from slice 1 and one from slice 2 of shard 0, one id from slice 0 of shard 2; shard 1 untouched
    forget = torch.stack([a[0][1][0], a[0][1][5], a[0][2][3], a[2][0][7]])
    kept = copy.deepcopy(state.checkpoints[0][1])  # the checkpoint shard 0 resumes from
    new, info = unlearn_sisa(state, forget, dm)

    assert info["affected_shards"] == [0, 2]
    assert info["restart_slice"] == {0: 1, 2: 0}
    assert info["removed"] == {0: 3, 2: 1}
    assert info["time"] > 0 and info["stages_retrained"] == 2 + 3

    # the from-scratch reference, built independently: the same assignment minus the deleted ids
    minus = [[sl[~torch.isin(sl, forget)] for sl in sh] for sh in a]
    ref = train_sisa(HP, dm, assignment=minus, epochs_per_slice=1, batch_size=32, seed=0)
    for s in range(3):
        assert same_params(new.ensemble.models[s], ref.ensemble.models[s]), f"shard {s} differs from retraining"
        for k in range(4):  # every stage checkpoint, optimizer state included
            got, want = new.checkpoints[s][k], ref.checkpoints[s][k]
            assert all(torch.equal(got["model"][n], want["model"][n]) for n in want["model"])
            assert flat_state(got["optimizer"]) == flat_state(want["optimizer"])
    x, _ = next(iter(dm.test_dataloader()))
    assert torch.equal(new.ensemble(x), ref.ensemble(x))

    # the unaffected shard is the very same model; checkpoints before the restart slice are reused
    assert new.ensemble.models[1] is state.ensemble.models[1]
    assert new.checkpoints[1] is state.checkpoints[1]
    assert new.checkpoints[0][1] is state.checkpoints[0][1]
    # the affected shards really changed, and the old state did not
    assert not same_params(new.ensemble.models[0], state.ensemble.models[0])
    assert torch.isin(forget, state.ids).all() and not torch.isin(forget, new.ids).any()
    assert torch.equal(new.deleted, forget.sort().values)
    assert flat_state(state.checkpoints[0][1]["optimizer"]) == flat_state(kept["optimizer"])  # resuming did not alter it

    # sequential requests: the same ids cannot be unlearned twice; further ids can
    with pytest.raises(ValueError, match="already unlearned"):
        unlearn_sisa(new, forget[:1], dm)
    newer, info2 = unlearn_sisa(new, a[1][2][:2], dm)
    assert info2["affected_shards"] == [1] and info2["restart_slice"] == {1: 2}
    assert newer.ensemble.models[0] is new.ensemble.models[0]


def test_default_epochs_per_slice_is_epochs_over_slices(dm):
    st = train_sisa(HP, dm, shards=2, slices=4, epochs=9, batch_size=64, seed=3,
                    assignment=[[sl[:10] for sl in sh] for sh in make_assignment(dm.primary_ids, 2, 4, 3)])
    assert st.epochs_per_slice == 2  # round(9 / 4)
    assert train_sisa(HP, dm, assignment=st.assignment, epochs=1, batch_size=64).epochs_per_slice == 1


# ------------------------------------------------------------ aggregation
class Fixed(nn.Module):
    """A stand-in shard model answering fixed logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), -1)

    def embed(self, x):
        return self.logits.expand(len(x), -1) * 2


def test_vote_is_a_majority_vote():
    # shards vote 2, 0, 2 (the confident shard 1 is outvoted); softmax would follow the confident one
    models = [Fixed([0.0, 1.0, 2.0]), Fixed([50.0, 0.0, 0.0]), Fixed([0.0, 0.0, 1.0])]
    ens = SisaEnsemble.from_models(models, "vote")
    x = torch.zeros(4, 1)
    assert torch.equal(ens(x), torch.tensor([[1.0, 0.0, 2.0]]).expand(4, -1))
    assert (ens(x).argmax(1) == 2).all()
    ens.aggregation = "softmax"
    assert (ens(x).argmax(1) == 0).all()
    # ties go to the lowest class
    tie = aggregate(torch.tensor([[[0.0, 0, 0, 1]], [[0, 1.0, 0, 0]], [[0, 0, 0, 1.0]], [[0, 1.0, 0, 0]]]), "vote")
    assert torch.equal(tie, torch.tensor([[0.0, 2, 0, 2]])) and tie.argmax(1).item() == 1
    assert torch.allclose(ens.embed(x), torch.tensor([[50.0 / 3 * 2, 2.0 / 3, 2.0]]).expand(4, -1))


def test_softmax_averages_probabilities():
    logits = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    out = aggregate(logits, "softmax")
    assert torch.allclose(out, (logits[0].softmax(1) + logits[1].softmax(1) + logits[2].softmax(1)) / 3)
    assert torch.allclose(out.sum(1), torch.ones(5))
    with pytest.raises(ValueError, match="unknown SISA aggregation"):
        aggregate(logits, "max")


def test_ensemble_accuracy_on_digits(dm, state):
    loader = dm.test_dataloader()
    assert evaluate(state.ensemble, loader)["acc"] > 0.7
    soft = SisaEnsemble.from_models(list(state.ensemble.models), "softmax")
    assert evaluate(soft, loader)["acc"] > 0.7
    x, _ = next(iter(loader))
    assert state.ensemble.embed(x[:5]).shape == (5, 128)
    fresh = SisaEnsemble(HP, shards=2)
    assert len(fresh.models) == 2 and fresh(x[:3]).shape == (3, 10)


# --------------------------------------------------------------- bad input
def test_bad_forget_sets_stop_with_a_sentence(dm, state):
    with pytest.raises(ValueError, match="outside the primary set"):
        unlearn_sisa(state, dm.backup_ids[:2], dm)
    with pytest.raises(ValueError, match="twice"):
        unlearn_sisa(state, [int(dm.primary_ids[0])] * 2, dm)
    with pytest.raises(ValueError, match="empty"):
        unlearn_sisa(state, [], dm)
    with pytest.raises(ValueError, match="would empty shard 1"):
        unlearn_sisa(state, state.shard_ids(1), dm)


def test_bad_training_arguments(dm, state):
    with pytest.raises(ValueError, match="cannot fill"):
        make_assignment(torch.arange(5), 3, 2)
    with pytest.raises(ValueError, match="SISA assignment"):
        train_sisa(HP, dm, assignment=[[dm.primary_ids[:5]], [dm.primary_ids[:5]]], epochs=1)
    with pytest.raises(ValueError, match="shards=2"):
        train_sisa(HP, dm, assignment=state.assignment, shards=2, epochs=1)
    with pytest.raises(ValueError, match="unknown SISA aggregation"):
        train_sisa(HP, dm, assignment=state.assignment, epochs=1, aggregation="mean")
