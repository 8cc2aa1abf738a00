"""The append-only JSON-lines ledger: records, twins, replay and resuming."""

import json
from datetime import datetime

import pytest
import torch
from torch.utils.data import Dataset

from healing_pl.adversary.ledger import Ledger, make_request_id
from healing_pl.adversary.membership import MembershipIndex, Request, sample_hash
from healing_pl.adversary.streams import RequestStream, run_rounds


class Pool(Dataset):
    def __init__(self, n=120):
        g = torch.Generator().manual_seed(1)
        self.data = torch.rand(n, 1, 2, 2, generator=g)
        self.targets = torch.arange(n) % 3

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.data[i], int(self.targets[i])


PRIMARY = torch.arange(80)


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def make_stream():
    # 8 adversarial requests of which 3 are non-members, and 8 benign ones
    adversarial = torch.tensor([1, 2, 3, 4, 5, 90, 100, 110])
    return RequestStream(adversarial, PRIMARY, n_benign=8, round_size=4, seed=3)


@pytest.fixture
def run(tmp_path):
    pool = Pool()
    ledger = Ledger(tmp_path / "run")
    membership = MembershipIndex(pool, PRIMARY)
    records = run_rounds(make_stream(), membership, ledger, lambda r, ids: {"acc": 0.5})
    return pool, ledger, records


def test_every_request_is_one_valid_json_line(run):
    pool, ledger, records = run
    assert ledger.path.name == "ledger.jsonl"
    rows = lines(ledger.path)
    requests = [r for r in rows if r["type"] == "request"]
    assert len(requests) == 16 and len(ledger) == 16
    assert len([r for r in rows if r["type"] == "round"]) == 4
    keys = {
        "request_id",
        "requester",
        "kind",
        "named_by",
        "time",
        "round",
        "sample_id",
        "sample_hash",
        "decision",
        "reason",
    }
    for r in requests:
        assert keys <= set(r)
        assert r["time"].endswith("Z")
        stamp = datetime.fromisoformat(r["time"].replace("Z", "+00:00"))
        assert stamp.utcoffset().total_seconds() == 0
        assert r["sample_hash"] == sample_hash(pool[r["sample_id"]][0])
    assert sum(r["decision"] == "reject" for r in requests) == 3
    assert {r["reason"] for r in requests if r["decision"] == "reject"} == {"not_a_member"}
    assert len({r["request_id"] for r in requests}) == 16


def test_replay_reconstructs_the_state(run):
    pool, ledger, records = run
    state = Ledger.replay(ledger.path.parent)
    assert len(state.requests) == 16
    assert sorted(state.rounds) == [0, 1, 2, 3]
    assert state.rounds[1]["metrics"] == {"acc": 0.5}
    fresh = MembershipIndex(pool, PRIMARY)
    state.apply_to(fresh)
    state.apply_to(fresh)  # idempotent
    assert len(fresh.unlearned_ids) == 13
    rebuilt = state.rounds_of_requests()
    assert rebuilt == make_stream().rounds()


def test_replaying_twice_appends_nothing(run):
    pool, ledger, records = run
    before = ledger.path.read_text()
    state = Ledger.replay(ledger.path)
    for _ in range(2):
        calls = []
        again = run_rounds(
            state.rounds_of_requests(),
            MembershipIndex(pool, PRIMARY),
            Ledger(ledger.path),
            lambda r, ids: calls.append(r),
        )
        assert calls == []  # finished rounds are not applied again
        assert [r["n_accepted"] for r in again] == [r["n_accepted"] for r in records]
        assert ledger.path.read_text() == before
    # the same with the original stream object
    run_rounds(make_stream(), MembershipIndex(pool, PRIMARY), Ledger(ledger.path), None)
    assert ledger.path.read_text() == before


def test_resuming_a_crashed_round_appends_only_what_is_missing(tmp_path):
    pool = Pool()
    stream = make_stream()
    rounds = stream.rounds()
    # a run that crashed after round 0 and half of round 1
    ledger = Ledger(tmp_path)
    membership = MembershipIndex(pool, PRIMARY)
    run_rounds(rounds[:1], membership, ledger, None)
    ledger.record(membership.check(rounds[1])[:2], 1)
    n_before = len(lines(ledger.path))

    calls = []

    def on_round(round_index, accepted_ids):
        calls.append(round_index)

    run_rounds(rounds, MembershipIndex(pool, PRIMARY), Ledger(tmp_path), on_round)
    assert calls == [1, 2, 3]
    rows = lines(ledger.path)
    assert len(rows) == n_before + 2 + 4 * 2 + 3  # rest of round 1, rounds 2-3, three summaries
    assert len([r for r in rows if r["type"] == "request"]) == 16

    # and a clean run writes the same requests
    clean = Ledger(tmp_path / "clean")
    run_rounds(make_stream(), MembershipIndex(pool, PRIMARY), clean, None)

    def requests(records):
        found = [r for r in records if r["type"] == "request"]
        untimed = [{k: v for k, v in r.items() if k != "time"} for r in found]
        return sorted(untimed, key=lambda r: r["request_id"])

    assert requests(rows) == requests(lines(clean.path))


def test_request_ids_are_stable_and_separate_duplicates(tmp_path):
    pool = Pool()
    membership = MembershipIndex(pool, PRIMARY)
    requests = [Request("user-1", sample_id=7)] * 2 + [Request("user-2", sample_id=7)]
    ledger = Ledger(tmp_path / "a.jsonl")
    ids = ledger.record(membership.check(requests), round_index=0)
    assert len(set(ids)) == 3
    h = sample_hash(pool[7][0])
    assert ids[0] == make_request_id("user-1", h, 0, 0)
    assert ids[1] == make_request_id("user-1", h, 0, 1)
    # naming the sample by hash is the same request as naming it by id
    by_hash = membership.check([Request("user-1", sample_hash=h)])
    assert Ledger(tmp_path / "b.jsonl").record(by_hash, 0)[0] == ids[0]
    # another round is another request
    assert ledger.record(membership.check(requests[:1]), round_index=1)[0] != ids[0]
    reasons = [r["reason"] for r in lines(ledger.path)]
    assert reasons == ["member", "duplicate", "duplicate", "member"]


def test_twins_are_appended_and_replayed(run):
    pool, ledger, records = run
    state = Ledger.replay(ledger.path)
    accepted = next(r for r in state.requests if r["decision"] == "accept")
    rejected = next(r for r in state.requests if r["decision"] == "reject")
    rid = ledger.request_id_for_sample(accepted["sample_id"])
    assert rid == accepted["request_id"]
    n = len(lines(ledger.path))
    assert ledger.append_twin(rid, 85, sample_hash(pool[85][0]), score=0.25)
    assert not ledger.append_twin(rid, 85, sample_hash(pool[85][0]), score=0.25)  # already there
    # a later twin supersedes the earlier one
    assert ledger.append_twin(rid, 86, sample_hash(pool[86][0]), score=0.5)
    assert len(lines(ledger.path)) == n + 2
    twins = Ledger.replay(ledger.path).twins
    assert twins[rid]["twin_id"] == 86 and twins[rid]["score"] == 0.5
    with pytest.raises(ValueError, match="rejected"):
        ledger.append_twin(rejected["request_id"], 85, "x")
    with pytest.raises(ValueError, match="no request"):
        ledger.append_twin("0" * 32, 85, "x")
    # a reopened ledger knows the twin too
    assert not Ledger(ledger.path).append_twin(rid, 86, sample_hash(pool[86][0]))


def test_corrupt_ledger_raises(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"type": "round", "round": 0}\n{"type": "request", "request_\n')
    with pytest.raises(ValueError, match="Line 2 .* not valid JSON"):
        Ledger.replay(path)
    path.write_text('{"kind": "what"}\n')
    with pytest.raises(ValueError, match="no known record type"):
        Ledger(path)
    with pytest.raises(ValueError, match="no ledger"):
        Ledger.replay(tmp_path / "missing")
