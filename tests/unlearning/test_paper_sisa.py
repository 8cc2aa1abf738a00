"""The paper's SISA protocol: 10% of every slice held out, disjoint slice stages of N epochs, a vote weighted by
held-out accuracy, and exact unlearning against a from-scratch retrain."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.unlearning.sisa import common as sisa_common
from healing_pl.unlearning.sisa import (
    fit_plain,
    load_sisa,
    make_assignment,
    seed_for,
    split_holdout,
    train_sisa,
    unlearn_sisa,
)

HP = dict(backbone="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=1e-2)
N = 2  # the baseline's epochs: each slice stage trains N epochs
RECIPE = dict(shards=3, slices=2, epochs=N, batch_size=32, seed=0, protocol="paper")


@pytest.fixture(scope="module")
def dm():
    return HealingDataModule("digits", seed=0)


@pytest.fixture(scope="module")
def state(dm):
    return train_sisa(HP, dm, **RECIPE)


def same_params(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_ten_percent_of_every_slice_is_held_out(dm, state):
    full = make_assignment(dm.primary_ids, 3, 2, seed=0)
    for s, shard in enumerate(full):
        held_parts = []
        for r, sl in enumerate(shard):
            train = state.assignment[s][r]
            held = sl[~torch.isin(sl, train)]
            assert held.numel() == math.ceil(0.1 * sl.numel())  # 10% of the slice, rounded up
            assert train.numel() + held.numel() == sl.numel() and torch.isin(train, sl).all()
            held_parts.append(held)
        assert torch.equal(state.holdout[s], torch.cat(held_parts).sort().values)
    assert not torch.isin(torch.cat(state.holdout), state.ids).any()  # never trained on
    again, _ = split_holdout(full, seed=0)
    other, _ = split_holdout(full, seed=1)
    assert torch.equal(again[0][0], state.assignment[0][0]) and not torch.equal(other[0][0], again[0][0])
    assert state.epochs_per_slice == N


def test_each_slice_stage_trains_n_epochs_on_its_own_slice(dm, state):
    """Shard 1 by hand: its seeded initial weights, then fit_plain on slice r alone (N epochs), continuing."""
    model = sisa_common._fresh_model(HP, seed_for("init", 0, 1), torch.device("cpu"), torch.float32)
    optimizer = sisa_common._adam(model)
    for r in range(2):
        fit_plain(
            model, dm, state.assignment[1][r], epochs=N, seed=seed_for("stage", 0, 1, r), batch_size=32,
            optimizer=optimizer,
        )  # fmt: skip
    assert same_params(model, state.ensemble.models[1])


def _holdout_accuracy(model, dm, ids):
    (x, y), *rest = list(dm.loader(ids, batch_size=len(ids)))
    assert not rest and torch.equal(y, dm.targets[ids])
    with torch.no_grad():
        return float((model.eval()(x).argmax(-1) == y).double().mean())


def test_vote_weights_are_the_held_out_accuracies(dm, state):
    ens = state.ensemble
    want = [_holdout_accuracy(m, dm, h) for m, h in zip(ens.models, state.holdout)]
    assert ens.aggregation == "weighted_vote"
    assert ens.vote_weights.tolist() == pytest.approx(want, abs=1e-12)
    assert 0.3 < min(want)  # the shards learned something
    x, _ = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        votes = torch.stack([m(x).argmax(-1) for m in ens.models])  # (S, B)
        scores = sum(w * F.one_hot(v, 10).double() for w, v in zip(want, votes))
        assert torch.allclose(ens(x).double(), scores, atol=1e-6)
    # a weighted vote, not a majority vote: two shards agreeing can lose to a more accurate third
    logits = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    ens_weights = torch.tensor([0.2, 0.3, 0.9])
    from healing_pl.unlearning.sisa import aggregate

    assert aggregate(logits, "weighted_vote", ens_weights).argmax(-1).item() == 1
    assert aggregate(logits, "vote").argmax(-1).item() == 0


def test_unlearning_equals_a_from_scratch_retrain(dm, state):
    a, h = state.assignment, state.holdout
    # training ids from slice 1 of shard 0 and slice 0 of shard 2, a held-out id of shard 1 (its model stays)
    forget = torch.stack([a[0][1][0], a[0][1][4], a[2][0][3], h[1][2]])
    new, info = unlearn_sisa(state, forget, dm)
    assert info["affected_shards"] == [0, 2] and info["restart_slice"] == {0: 1, 2: 0}
    assert info["removed"] == {0: 2, 1: 1, 2: 1}
    assert info["stages_retrained"] == 1 + 2
    minus = [[sl[~torch.isin(sl, forget)] for sl in sh] for sh in a]
    held = [x[~torch.isin(x, forget)] for x in h]
    ref = train_sisa(HP, dm, assignment=minus, holdout=held, **{k: v for k, v in RECIPE.items() if k != "shards"})
    for s in range(3):
        assert same_params(new.ensemble.models[s], ref.ensemble.models[s]), f"shard {s} differs from retraining"
        for got, want in zip(new.checkpoints[s], ref.checkpoints[s], strict=True):
            assert all(torch.equal(got["model"][n], want["model"][n]) for n in want["model"])
        assert torch.equal(new.holdout[s], ref.holdout[s])
    assert torch.equal(new.ensemble.vote_weights, ref.ensemble.vote_weights)
    x, _ = next(iter(dm.test_dataloader()))
    assert torch.equal(new.ensemble(x), ref.ensemble(x))
    assert new.ensemble.models[1] is state.ensemble.models[1]  # a held-out id retrains nothing
    assert new.holdout[1].numel() == h[1].numel() - 1
    assert new.ensemble.vote_weights[1] == _holdout_accuracy(new.ensemble.models[1], dm, new.holdout[1])
    assert torch.equal(new.deleted_shards, torch.tensor([0, 0, 2, 1])[forget.argsort()])


def test_shard_files_keep_the_protocol_and_held_out_ids(dm, state, tmp_path):
    via_files = train_sisa(HP, dm, directory=str(tmp_path), **RECIPE)
    for s in range(3):
        assert same_params(via_files.ensemble.models[s], state.ensemble.models[s])
        assert torch.equal(via_files.holdout[s], state.holdout[s])
    assert torch.equal(via_files.ensemble.vote_weights, state.ensemble.vote_weights)
    loaded = load_sisa(str(tmp_path), dm, device="cpu")
    assert loaded.protocol == "paper" and loaded.ensemble.aggregation == "weighted_vote"
    with pytest.raises(ValueError, match="trained with another recipe"):  # a bourtoule run never mixes with them
        train_sisa(HP, dm, directory=str(tmp_path), **{**RECIPE, "protocol": "bourtoule", "epochs_per_slice": N})


def test_protocol_knobs_stop_with_a_sentence(dm):
    from healing_pl.unlearning import UNLEARNERS

    sisa = UNLEARNERS["sisa"]
    assert sisa(protocol="paper").hyperparameters()["protocol"] == "paper"
    assert (
        sisa(protocol="paper").epochs_per_slice_for(10) == 10
        and sisa(protocol="paper", epochs_per_slice=3).epochs_per_slice_for(10) == 3
    )
    with pytest.raises(ValueError, match=r"^unlearn\.aggregation softmax does not apply to unlearn\.protocol paper"):
        sisa(protocol="paper", aggregation="softmax")
    with pytest.raises(ValueError, match=r"^unlearn\.protocol must be one of bourtoule, paper"):
        sisa(protocol="golatkar")
    with pytest.raises(ValueError, match="^unknown SISA protocol 'x'"):
        train_sisa(HP, dm, **{**RECIPE, "protocol": "x"})
    with pytest.raises(ValueError, match="^the paper's SISA protocol votes weighted by held-out accuracy"):
        train_sisa(HP, dm, **{**RECIPE, "aggregation": "softmax"})


def test_healing_weighs_the_vote_by_the_healed_shards_held_out_accuracies(dm, state):
    from healing_pl.unlearning.sisa import heal_sisa

    a = state.assignment
    forget = torch.stack([a[0][1][0], a[2][0][3]])
    unlearned, _ = unlearn_sisa(state, forget, dm)
    pairs = [{"request_id": int(forget[0]), "twin_id": int(dm.backup_ids[0])}]
    seen = []

    def on_epoch(epoch, ens):
        seen.append(
            ens.vote_weights.tolist() == [_holdout_accuracy(m, dm, h) for m, h in zip(ens.models, state.holdout)]
        )

    out = heal_sisa(unlearned, forget, pairs, dm, epochs=2, lr=2e-3, seed=5, on_epoch=on_epoch)
    assert seen == [True, True]
    want = [_holdout_accuracy(m, dm, h) for m, h in zip(out.ensemble.models, out.holdout)]
    assert out.ensemble.aggregation == "weighted_vote" and out.ensemble.vote_weights.tolist() == want
    assert not same_params(out.ensemble.models[0], unlearned.ensemble.models[0])  # shard 0 was healed
