"""Request streams: ratio, order, rounds, and running rounds through the check."""

import pytest
import torch
from torch.utils.data import Dataset

from healing_pl.adversary.ledger import Ledger
from healing_pl.adversary.membership import MembershipIndex, sample_hash
from healing_pl.adversary.streams import RequestStream, run_rounds


class Pool(Dataset):
    def __init__(self, n=200):
        g = torch.Generator().manual_seed(0)
        self.data = torch.rand(n, 1, 3, 3, generator=g)
        self.targets = torch.arange(n) % 4

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.data[i], int(self.targets[i])


PRIMARY = torch.arange(100)
ADV = torch.tensor([3, 5, 7, 11, 13, 17, 19, 23, 29, 31])


def kinds(requests):
    return "".join("A" if r.kind == "adversarial" else "B" for r in requests)


@pytest.mark.parametrize("ratio, n_benign", [(0.0, 0), (0.5, 10), (0.75, 30), (0.2, 2)])
def test_benign_ratio(ratio, n_benign):
    stream = RequestStream(ADV, PRIMARY, benign_ratio=ratio)
    assert stream.n_adversarial == 10 and stream.n_benign == n_benign


def test_benign_requests_are_members_from_users_and_avoid_the_adversary():
    stream = RequestStream(ADV, PRIMARY, n_benign=40, n_users=5, seed=2)
    benign = [r for r in stream.requests if r.kind == "benign"]
    adversarial = [r for r in stream.requests if r.kind == "adversarial"]
    ids = [r.sample_id for r in benign]
    assert len(set(ids)) == 40 and set(ids) <= set(PRIMARY.tolist())
    assert not set(ids) & set(ADV.tolist())
    assert {r.requester for r in benign} <= {f"user-{n}" for n in range(5)}
    assert [r.sample_id for r in adversarial] == ADV.tolist()  # the adversary's order is kept
    assert {r.requester for r in adversarial} == {"adversary"}


def test_orders():
    first = RequestStream(ADV, PRIMARY, n_benign=5, order="adversary_first")
    assert kinds(first.requests) == "A" * 10 + "B" * 5
    last = RequestStream(ADV, PRIMARY, n_benign=5, order="benign_first")
    assert kinds(last.requests) == "B" * 5 + "A" * 10
    even = RequestStream(ADV, PRIMARY, n_benign=10, order="interleaved")
    assert kinds(even.requests) == "AB" * 10
    two_to_one = RequestStream(ADV, PRIMARY, n_benign=5, order="interleaved")
    assert kinds(two_to_one.requests) == "ABA" * 5  # each kind at the middle of its slots
    one_in_four = RequestStream(ADV[:1], PRIMARY, n_benign=3, order="interleaved")
    # the adversary's only slot is centred at 0.5, a tie with a benign one: it goes first
    assert kinds(one_in_four.requests) == "BABB"


def test_interleaved_keeps_the_ratio_in_every_prefix():
    stream = RequestStream(ADV, PRIMARY, n_benign=30, order="interleaved")
    order = kinds(stream.requests)
    for cut in range(4, 41, 4):
        assert order[:cut].count("A") == cut // 4


def test_shuffled_is_a_seeded_permutation():
    a = RequestStream(ADV, PRIMARY, n_benign=20, order="shuffled", seed=7)
    b = RequestStream(ADV, PRIMARY, n_benign=20, order="shuffled", seed=7)
    c = RequestStream(ADV, PRIMARY, n_benign=20, order="shuffled", seed=8)
    assert a.requests == b.requests
    assert a.requests != c.requests
    assert kinds(a.requests).count("A") == 10
    unshuffled = RequestStream(ADV, PRIMARY, n_benign=20, seed=7).requests
    assert sorted(map(repr, a.requests)) == sorted(map(repr, unshuffled))


def test_round_sizes():
    stream = RequestStream(ADV, PRIMARY, n_benign=15, round_size=10)
    assert [len(r) for r in stream] == [10, 10, 5]
    assert len(stream) == 3
    assert [r for round_ in stream for r in round_] == stream.requests
    assert [len(r) for r in RequestStream(ADV, PRIMARY)] == [10]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(adversarial_ids=[], benign_pool_ids=PRIMARY), "no requests"),
        (dict(adversarial_ids=[], benign_pool_ids=PRIMARY, benign_ratio=0.5), "no requests"),
        (dict(adversarial_ids=ADV, benign_pool_ids=PRIMARY, benign_ratio=1.0), r"\[0, 1\)"),
        (dict(adversarial_ids=ADV, benign_pool_ids=PRIMARY[:10], n_benign=10), "only 7 exist"),
        (dict(adversarial_ids=ADV, order="random"), "Unknown order"),
        (dict(adversarial_ids=ADV, round_size=0), "round_size"),
        (dict(adversarial_ids=[1, 1]), "repeats"),
        (dict(adversarial_ids=ADV, name_by="hash"), "needs the dataset"),
    ],
)
def test_bad_streams_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RequestStream(**kwargs)


def test_benign_only_stream():
    stream = RequestStream([], PRIMARY, n_benign=12, round_size=5)
    assert stream.n_adversarial == 0 and [len(r) for r in stream] == [5, 5, 2]


def test_name_by_hash():
    pool = Pool()
    stream = RequestStream(ADV[:2], PRIMARY, name_by="hash", dataset=pool)
    expected = [sample_hash(pool[i][0]) for i in ADV[:2].tolist()]
    assert [r.sample_hash for r in stream.requests] == expected
    assert all(r.sample_id is None for r in stream.requests)


def test_run_rounds(tmp_path):
    pool = Pool()
    adversarial = torch.cat([ADV[:6], torch.tensor([150, 160, 170, 180])])  # 4 non-members
    stream = RequestStream(adversarial, PRIMARY, benign_ratio=0.5, round_size=6, seed=1)
    membership = MembershipIndex(pool, PRIMARY)
    ledger = Ledger(tmp_path / "run")
    calls = []

    def on_round(round_index, accepted_ids):
        calls.append((round_index, accepted_ids.clone()))
        accuracy = torch.tensor(0.9 - 0.01 * round_index)
        return {"accuracy": accuracy, "n_forgotten": len(accepted_ids)}

    records = run_rounds(stream, membership, ledger, on_round)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert [r["n_requests"] for r in records] == [6, 6, 6, 2]
    assert sum(r["n_accepted"] for r in records) == 16
    assert sum(r["n_rejected"] for r in records) == 4
    assert sum(r["by_kind"]["benign"]["accepted"] for r in records) == 10
    assert sum(r["reasons"].get("not_a_member", 0) for r in records) == 4
    assert [i for i, _ in calls] == [0, 1, 2, 3]
    accepted = torch.cat([ids for _, ids in calls])
    assert torch.equal(torch.sort(accepted).values, membership.unlearned_ids)
    assert not torch.isin(accepted, torch.tensor([150, 160, 170, 180])).any()
    assert records[0]["metrics"]["n_forgotten"] == records[0]["n_accepted"]


def test_run_rounds_on_an_empty_stream_raises(tmp_path):
    with pytest.raises(ValueError, match="no requests"):
        run_rounds([], MembershipIndex(Pool(), PRIMARY), Ledger(tmp_path), None)


def test_run_rounds_resumes_after_the_last_restorable_round(tmp_path):
    stream = RequestStream(ADV, PRIMARY, benign_ratio=0.5, round_size=5, seed=3)  # 20 requests, 4 rounds
    calls = []

    def on_round(i, accepted):
        calls.append((i, accepted.tolist()))
        return {"n": int(accepted.numel())}

    first = run_rounds(stream, MembershipIndex(Pool(), PRIMARY), Ledger(tmp_path / "a"), on_round)
    applied, calls[:] = list(calls), []

    # a crash after round 1's summary: the rerun restores round 1 and applies rounds 2 and 3
    ledger = Ledger(tmp_path / "b")
    run_rounds(stream.rounds()[:2], MembershipIndex(Pool(), PRIMARY), ledger, on_round)
    calls[:], asked = [], []

    def restore(k):
        asked.append(k)
        return True

    records = run_rounds(stream, MembershipIndex(Pool(), PRIMARY), Ledger(tmp_path / "b"), on_round, restore=restore)
    assert asked == [1] and calls == applied[2:] and records == first

    # round 1's state was lost: round 0 is restored, round 1 applied again, its stored summary kept
    calls[:], asked[:] = [], []
    lines = len((tmp_path / "b" / "ledger.jsonl").read_text().splitlines())
    records = run_rounds(
        stream, MembershipIndex(Pool(), PRIMARY), Ledger(tmp_path / "b"), on_round, restore=lambda k: k == 0
    )
    assert calls == applied[1:] and records == first
    assert len((tmp_path / "b" / "ledger.jsonl").read_text().splitlines()) == lines  # nothing appended twice
    # nothing restorable: every round is applied again
    calls[:] = []
    run_rounds(stream, MembershipIndex(Pool(), PRIMARY), Ledger(tmp_path / "b"), on_round, restore=lambda k: False)
    assert calls == applied
