"""SISA: assignment, exact unlearning against from-scratch retraining, shard files, dtype, healing, bad input."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
from torch import nn

from healing_pl.data.datamodule import HealingDataModule
from healing_pl.models.classifier import evaluate
from healing_pl.unlearning.sisa import (
    SisaEnsemble,
    aggregate,
    fit_plain,
    heal_sisa,
    load_sisa,
    make_assignment,
    seed_for,
    train_sisa,
    train_sisa_shard,
    unlearn_sisa,
)
from healing_pl.unlearning.sisa import common as sisa_common
from healing_pl.unlearning.sisa import train as sisa_train

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


def same_state(a, b):
    """Two SisaStates hold the same assignment, stage checkpoints (optimizer included) and shard models."""
    assert a.num_shards == b.num_shards and a.epochs_per_slice == b.epochs_per_slice and a.dtype == b.dtype
    for s in range(a.num_shards):
        assert all(torch.equal(x, y) for x, y in zip(a.assignment[s], b.assignment[s], strict=True))
        assert same_params(a.ensemble.models[s], b.ensemble.models[s]), f"shard {s} differs"
        for got, want in zip(a.checkpoints[s], b.checkpoints[s], strict=True):
            assert all(torch.equal(got["model"][n], want["model"][n]) for n in want["model"])
            assert flat_state(got["optimizer"]) == flat_state(want["optimizer"])
    return True


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
    assert info["time"] > 0 and info["stages_retrained"] == 2 + 3 and info["heal_steps_replayed"] == 0

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
    # resuming did not alter the checkpoint
    assert flat_state(state.checkpoints[0][1]["optimizer"]) == flat_state(kept["optimizer"])

    # sequential requests: the same ids cannot be unlearned twice; further ids can
    with pytest.raises(ValueError, match="already unlearned"):
        unlearn_sisa(new, forget[:1], dm)
    newer, info2 = unlearn_sisa(new, a[1][2][:2], dm)
    assert info2["affected_shards"] == [1] and info2["restart_slice"] == {1: 2}
    assert newer.ensemble.models[0] is new.ensemble.models[0]


def test_default_epochs_per_slice_keeps_the_baselines_passes(dm):
    small = [[sl[:10] for sl in sh] for sh in make_assignment(dm.primary_ids, 2, 4, 3)]
    st = train_sisa(HP, dm, shards=2, slices=4, epochs=9, batch_size=64, seed=3, assignment=small)
    assert st.epochs_per_slice == 4  # ceil(2 * 9 / 5): 4 * 5 / 2 = 10 passes per sample >= 9
    old = train_sisa(HP, dm, assignment=small, epochs=9, epochs_per_slice="per_slice", batch_size=64, seed=3)
    assert old.epochs_per_slice == 2  # round(9 / 4)
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


# ------------------------------------------------------------ shard files
# round(epochs 3 / 3 slices): 1 epoch per slice, as RECIPE
SHARD_RECIPE = dict(shards=3, slices=3, epochs=3, epochs_per_slice="per_slice", seed=0, batch_size=32)


@pytest.fixture(scope="module")
def jobs(dm, tmp_path_factory):
    """The shard files of RECIPE, each trained by its own call (as cluster jobs would), in a shuffled order."""
    folder = str(tmp_path_factory.mktemp("sisa_jobs"))
    for s in (2, 0, 1):
        path = train_sisa_shard(HP, dm, s, **SHARD_RECIPE, device="cpu", directory=folder)
        assert path == os.path.join(folder, f"shard{s}.pt")
    return folder


def copy_shards(jobs, dest, shards=(0, 1, 2)):
    os.makedirs(dest, exist_ok=True)
    for s in shards:
        shutil.copy(os.path.join(jobs, f"shard{s}.pt"), dest)
    return str(dest)


def test_shard_jobs_then_load_equal_training_in_one_process(dm, state, jobs, tmp_path, monkeypatch):
    assert sorted(os.listdir(jobs)) == ["shard0.pt", "shard1.pt", "shard2.pt"]  # no temporary file left behind
    data = torch.load(os.path.join(jobs, "shard1.pt"), weights_only=True)
    assert data["shard"] == 1 and len(data["slices"]) == 3 and len(data["checkpoints"]) == 4
    assert all(torch.equal(x, y) for x, y in zip(data["slices"], state.assignment[1], strict=True))
    meta = data["meta"]
    assert meta["hparams"] == HP and (meta["shards"], meta["slices"], meta["epochs_per_slice"]) == (3, 3, 1)
    assert (meta["seed"], meta["batch_size"], meta["dtype"]) == (0, 32, "float32") and len(meta["primary_hash"]) == 64

    loaded = load_sisa(jobs, dm, aggregation="vote", device="cpu")
    assert same_state(loaded, state) and loaded.train_time > 0 and len(loaded.shard_times) == 3
    x, _ = next(iter(dm.test_dataloader()))
    assert torch.equal(loaded.ensemble(x), state.ensemble(x))

    # train_sisa through a folder goes through the same per-shard code
    one = train_sisa(HP, dm, **RECIPE, directory=str(tmp_path / "one"))
    assert same_state(one, state) and sorted(os.listdir(tmp_path / "one")) == ["shard0.pt", "shard1.pt", "shard2.pt"]

    # shards whose file exists with the same recipe are not trained again
    def no_training(*args, **kwargs):
        raise AssertionError("a shard with a matching file was trained again")

    partial = copy_shards(jobs, tmp_path / "partial", shards=(0, 2))
    calls = []
    real = sisa_train._train_shard
    monkeypatch.setattr(sisa_train, "_train_shard", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    assert same_state(train_sisa(HP, dm, **RECIPE, directory=partial), state) and calls == [1]
    monkeypatch.setattr(sisa_train, "_train_shard", no_training)
    assert same_state(train_sisa(HP, dm, **RECIPE, directory=jobs, aggregation="softmax"), state)

    # unlearning from the loaded state is unlearning from the one trained in memory
    forget = state.assignment[1][1][:3]
    monkeypatch.setattr(sisa_train, "_train_shard", real)
    assert same_state(unlearn_sisa(loaded, forget, dm)[0], unlearn_sisa(state, forget, dm)[0])


def test_shard_files_of_other_recipes_missing_or_corrupt_stop_with_a_sentence(dm, jobs, tmp_path):
    with pytest.raises(ValueError, match=r"misses the shard file\(s\) shard1.pt of its 3 shards"):
        load_sisa(copy_shards(jobs, tmp_path / "missing", shards=(0, 2)), dm, device="cpu")
    mixed = copy_shards(jobs, tmp_path / "mixed", shards=(0, 2))
    train_sisa_shard(HP, dm, 1, **{**SHARD_RECIPE, "seed": 1}, device="cpu", directory=mixed)
    with pytest.raises(ValueError, match=r"shard1.pt was trained with another recipe .*seed 1 vs 0"):
        load_sisa(mixed, dm, device="cpu")
    with pytest.raises(ValueError, match=r"shard1.pt was trained with another recipe .*seed 1 vs 0"):
        train_sisa(HP, dm, **RECIPE, directory=mixed)  # refused, not overwritten
    corrupt = copy_shards(jobs, tmp_path / "corrupt")
    with open(os.path.join(corrupt, "shard2.pt"), "wb") as f:
        f.write(b"not a torch file")
    with pytest.raises(ValueError, match="shard2.pt is not a readable SISA shard file"):
        load_sisa(corrupt, dm, device="cpu")
    torch.save({"format": "something else"}, os.path.join(corrupt, "shard2.pt"))
    with pytest.raises(ValueError, match="shard2.pt is corrupt or not a"):
        load_sisa(corrupt, dm, device="cpu")
    with pytest.raises(ValueError, match="another primary set"):
        load_sisa(jobs, HealingDataModule("digits", seed=1), device="cpu")
    with pytest.raises(ValueError, match="holds no SISA shard files"):
        load_sisa(str(tmp_path), dm, device="cpu")
    with pytest.raises(ValueError, match="shard must lie in 0..2"):
        train_sisa_shard(HP, dm, 3, **SHARD_RECIPE, device="cpu", directory=str(tmp_path / "x"))


# ---------------------------------------------------------- device, dtype
def test_float64_shards_train_and_unlearn_exactly(dm):
    st = train_sisa(HP, dm, **RECIPE, dtype=torch.float64)
    assert st.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in st.ensemble.parameters())
    assert all(v.dtype == torch.float64 for c in st.checkpoints for k in c for v in k["model"].values())
    x, _ = next(iter(dm.test_dataloader()))
    assert st.ensemble(x.double()).dtype == torch.float64
    a = st.assignment
    forget = torch.stack([a[0][2][1], a[1][1][4]])
    new, _ = unlearn_sisa(st, forget, dm)
    minus = [[sl[~torch.isin(sl, forget)] for sl in sh] for sh in a]
    ref = train_sisa(HP, dm, assignment=minus, epochs_per_slice=1, batch_size=32, seed=0, dtype="float64")
    assert same_state(new, ref) and new.ensemble.models[2] is st.ensemble.models[2]
    assert all(p.dtype == torch.float64 for p in new.ensemble.parameters())


def test_devices_are_never_swapped_silently(dm):
    model = sisa_common._fresh_model(HP, 0, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="lives on cpu but was asked to train on meta"):
        fit_plain(model, dm, dm.primary_ids[:8], epochs=1, seed=0, device="meta")
    with pytest.raises(ValueError, match="floating torch dtype"):
        train_sisa(HP, dm, **RECIPE, dtype=torch.int64)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train_sisa(HP, dm, **RECIPE, device="cuda")


# ---------------------------------------------------------------- healing
HEAL = dict(epochs=2, lr=2e-3, seed=5)


def hand_heal(model, dm, ids, *, epochs, lr, seed, shard, batch_size=32):
    """The healing fine-tune written out: a fresh Adam, one seeded fit_plain epoch after another."""
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for e in range(1, epochs + 1):
        fit_plain(model, dm, ids, epochs=1, seed=seed_for("heal", seed, shard, e), batch_size=batch_size, optimizer=opt)
    return model


@pytest.fixture(scope="module")
def healed(dm, state):
    a = state.assignment
    forget = torch.stack([a[0][1][0], a[0][2][3], a[2][0][7]])  # shards 0 and 2; shard 1 untouched
    pairs = [
        {"request_id": int(a[2][0][7]), "twin_id": int(dm.backup_ids[1])},
        {"request_id": int(a[0][1][0]), "twin_id": int(dm.backup_ids[0])},
    ]  # a[0][2][3] gets no twin
    unlearned, _ = unlearn_sisa(state, forget, dm)
    before = copy.deepcopy(unlearned.ensemble)
    calls = []
    out = heal_sisa(unlearned, forget, pairs, dm, **HEAL, on_epoch=lambda e, ens: calls.append((e, ens)))
    return dict(forget=forget, unlearned=unlearned, before=before, calls=calls, state=out)


def test_healing_fine_tunes_the_affected_shards_on_remain_plus_twins(dm, healed):
    unlearned, out = healed["unlearned"], healed["state"]
    assert [e for e, _ in healed["calls"]] == [1, 2]
    assert all(ens is out.ensemble for _, ens in healed["calls"])
    # the unaffected shard is the very same object; the unlearned state did not change
    assert out.ensemble.models[1] is unlearned.ensemble.models[1]
    assert all(same_params(m, b) for m, b in zip(unlearned.ensemble.models, healed["before"].models, strict=True))
    assert out.checkpoints is unlearned.checkpoints and out.assignment is unlearned.assignment
    twins = {0: dm.backup_ids[:1], 2: dm.backup_ids[1:2]}
    for s in (0, 2):
        assert not same_params(out.ensemble.models[s], unlearned.ensemble.models[s])
        ref = hand_heal(
            unlearned.ensemble.models[s], dm, torch.cat([unlearned.shard_ids(s), twins[s]]), shard=s, **HEAL
        )
        assert same_params(out.ensemble.models[s], ref), f"healed shard {s} differs from the hand-written fine-tune"
        assert torch.equal(out.twin_ids(s), twins[s])
    assert out.twin_ids(1).numel() == 0 and torch.equal(out.twin_ids().sort().values, dm.backup_ids[:2].sort().values)
    assert [len(h) for h in out.heals] == [1, 0, 1] and out.heals[0][0]["lr"] == HEAL["lr"]


def test_unlearning_after_healing_stays_exact(dm, state, healed):
    out, forget = healed["state"], healed["forget"]
    a = state.assignment
    twin0, late = dm.backup_ids[0], a[2][2][2]  # the twin healing shard 0; a primary id of shard 2, slice 2
    newer, info = unlearn_sisa(out, torch.stack([twin0, late]), dm)
    assert info["affected_shards"] == [0, 2] and info["restart_slice"] == {0: 3, 2: 2}
    assert info["stages_retrained"] == 1 and info["heal_steps_replayed"] == 2
    assert newer.ensemble.models[1] is state.ensemble.models[1]
    assert newer.twin_ids(0).numel() == 0 and torch.equal(newer.twin_ids(2), dm.backup_ids[1:2])

    # from scratch: SISA on the assignment minus every deleted id, then the same heal steps with the remaining twins
    gone = torch.cat([forget, late.view(1)])
    minus = [[sl[~torch.isin(sl, gone)] for sl in sh] for sh in a]
    ref = train_sisa(HP, dm, assignment=minus, epochs_per_slice=1, batch_size=32, seed=0)
    for s, twins in ((0, dm.backup_ids[:0]), (2, dm.backup_ids[1:2])):
        model = hand_heal(ref.ensemble.models[s], dm, torch.cat([ref.shard_ids(s), twins]), shard=s, **HEAL)
        assert same_params(newer.ensemble.models[s], model), f"shard {s} differs from retraining and healing"
    assert same_params(newer.ensemble.models[1], ref.ensemble.models[1])
    with pytest.raises(ValueError, match="already unlearned"):
        unlearn_sisa(newer, [int(twin0)], dm)


def test_bad_healing_requests_stop_with_a_sentence(dm, state, healed):
    unlearned, forget = healed["unlearned"], healed["forget"]
    pair = [{"request_id": int(forget[0]), "twin_id": int(dm.backup_ids[5])}]
    with pytest.raises(ValueError, match="has not unlearned"):
        heal_sisa(unlearned, state.assignment[1][0][:1], [], dm, **HEAL)
    with pytest.raises(ValueError, match="outside the backup set"):
        heal_sisa(unlearned, forget, [{"request_id": int(forget[0]), "twin_id": int(dm.primary_ids[0])}], dm, **HEAL)
    with pytest.raises(ValueError, match="outside the forget set"):
        heal_sisa(unlearned, forget[1:], pair, dm, **HEAL)
    with pytest.raises(ValueError, match="more than one twin"):
        heal_sisa(unlearned, forget, pair + [{**pair[0], "twin_id": int(dm.backup_ids[6])}], dm, **HEAL)
    with pytest.raises(ValueError, match="already healed with"):
        heal_sisa(healed["state"], forget, [{**pair[0], "twin_id": int(dm.backup_ids[0])}], dm, **HEAL)
    with pytest.raises(ValueError, match="at least one epoch"):
        heal_sisa(unlearned, forget, pair, dm, epochs=0, seed=0)
