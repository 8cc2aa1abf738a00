"""Membership check: content hashes, resolving requests, decisions and state."""

import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from healing_pl.adversary.membership import MembershipIndex, Request, sample_hash
from healing_pl.adversary.selectors import RandomSelector, build_surface


class TinyPool(Dataset):
    """20 random 1x4x4 samples; ids 0-9 are the training set.  Sample 19 copies sample 0."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, 255, (20, 1, 4, 4), generator=g).float()
        self.data[19] = self.data[0]
        self.targets = torch.arange(20) % 3

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.data[i], int(self.targets[i])


MEMBERS = torch.arange(10)


@pytest.fixture
def pool():
    return TinyPool()


@pytest.fixture
def index(pool):
    return MembershipIndex(pool, MEMBERS)


def reasons(decisions):
    return [d.reason for d in decisions]


# --------------------------------------------------------------- hashing


def test_sample_hash_depends_on_values_dtype_and_shape():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert sample_hash(x) == sample_hash(x.clone())
    assert sample_hash(x.t().contiguous().t()) == sample_hash(x)  # layout does not matter
    assert sample_hash(x) != sample_hash(x.double())
    assert sample_hash(x) != sample_hash(x.reshape(4, 3))
    y = x.clone()
    y[0, 0] += 1
    assert sample_hash(x) != sample_hash(y)
    # the documented digest: SHA-256 of "<dtype>|<shape>|" then the raw (native-order) bytes of the values
    expected = hashlib.sha256(b"torch.float32|(3, 4)|" + np.arange(12, dtype=np.float32).tobytes()).hexdigest()
    assert sample_hash(x) == expected
    assert sample_hash(x.t()) == hashlib.sha256(b"torch.float32|(4, 3)|" + x.t().numpy().tobytes()).hexdigest()


# --------------------------------------------------------------- resolving


def test_resolve_by_id_hash_and_tensor(pool, index):
    h = sample_hash(pool[3][0])
    assert index.resolve(3) == (3, h)
    assert index.resolve(h) == (3, h)
    assert index.resolve(pool[3][0]) == (3, h)
    assert index.resolve(Request("user-1", sample_hash=h)) == (3, h)
    outsider = sample_hash(pool[12][0])
    assert index.resolve(outsider) == (None, outsider)  # not a training sample
    assert index.resolve(99) == (99, None)


def test_request_names_exactly_one_of_id_or_hash():
    with pytest.raises(ValueError, match="exactly one"):
        Request("user-1")
    with pytest.raises(ValueError, match="exactly one"):
        Request("user-1", sample_id=1, sample_hash="ab")
    with pytest.raises(ValueError, match="kind"):
        Request("user-1", sample_id=1, kind="evil")


# ---------------------------------------------------------------- decisions


def test_rejects_every_non_member_and_accepts_every_member(pool, index):
    mixed = torch.randperm(20, generator=torch.Generator().manual_seed(1)).tolist()
    mixed.remove(19)  # sample 19 has a member's content; see the copies test
    decisions = index.check([Request("adversary", sample_id=i) for i in mixed])
    for i, d in zip(mixed, decisions):
        assert d.sample_id == i
        if i < 10:
            assert d.accepted and d.reason == "member" and d.decision == "accept"
        else:
            assert not d.accepted and d.reason == "not_a_member" and d.decision == "reject"


def test_non_member_content_is_rejected_by_hash(pool, index):
    decisions = index.check([Request.for_content(pool[i][0], "adversary") for i in range(10, 19)])
    assert reasons(decisions) == ["not_a_member"] * 9
    assert all(d.sample_id is None for d in decisions)


def test_unknown_ids_are_rejected(index):
    assert reasons(index.check([20, -1, 1000])) == ["unknown_id"] * 3


def test_duplicates_in_one_batch(pool, index):
    h4 = sample_hash(pool[4][0])
    decisions = index.check([4, 5, 4, Request("user-2", sample_hash=h4), 12, 12])
    assert reasons(decisions) == ["member", "member", "duplicate", "duplicate", "not_a_member", "not_a_member"]


def test_check_is_pure_and_commit_marks_unlearned(index):
    first = index.check([1, 2])
    assert reasons(index.check([1, 2])) == ["member", "member"]  # nothing changed yet
    assert torch.equal(index.commit(first), torch.tensor([1, 2]))
    assert torch.equal(index.unlearned_ids, torch.tensor([1, 2]))
    assert len(index.remaining_ids) == 8
    assert reasons(index.check([1, 3])) == ["already_unlearned", "member"]
    with pytest.raises(ValueError, match="stale"):
        index.commit(first)


def test_identical_copies_are_separate_samples(pool):
    pool.data[7] = pool.data[2]  # two training samples with the same content
    index = MembershipIndex(pool, MEMBERS)
    h = sample_hash(pool[2][0])
    decisions = index.check([h, h, h])
    assert [d.sample_id for d in decisions][:2] == [2, 7]
    assert reasons(decisions) == ["member", "member", "duplicate"]
    index.commit(decisions)
    assert reasons(index.check([h])) == ["already_unlearned"]


def test_mark_unlearned_is_idempotent_and_members_only(index):
    index.mark_unlearned([3, 4])
    index.mark_unlearned([3, 4])
    assert torch.equal(index.unlearned_ids, torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="training samples"):
        index.mark_unlearned([15])


def test_unlearn_and_burn_style_attack_is_blocked(pool, index):
    """A data-blind adversary names random pool ids; only real members get through."""
    surface = build_surface(system_knowledge="blind", data_knowledge="blind", dataset=pool, primary_ids=MEMBERS)
    ids = RandomSelector(seed=5).select(surface, 10)
    requests = [Request("adversary", sample_id=i, kind="adversarial") for i in ids.tolist()]
    decisions = index.check(requests)
    for i, d in zip(ids.tolist(), decisions):
        assert d.accepted == (i < 10)
