"""The append-only JSON-lines ledger: records, twins, replay and resuming."""

import hashlib
import json
from datetime import datetime

import pytest
import torch
from torch.utils.data import Dataset

from healing_pl.adversary.ledger import GENESIS, Ledger, make_request_id, verify
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
        untimed = [{k: v for k, v in r.items() if k not in ("time", "prev", "hash")} for r in found]
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
    Ledger(path).append_round({"round": 0})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"type": "request", "request_\n')
    with pytest.raises(ValueError, match="Line 2 .* not valid JSON"):
        Ledger.replay(path)
    path.write_text('{"kind": "what"}\n{"type": "round", "round": 0}\n')
    with pytest.raises(ValueError, match="no known record type"):
        Ledger(path)
    path.write_text('{"type": "round", "round": 0}\n')  # an old ledger, without the hash chain
    with pytest.raises(ValueError, match="no hash"):
        Ledger(path)
    with pytest.raises(ValueError, match="no ledger"):
        Ledger.replay(tmp_path / "missing")


# --------------------------------------------------------------------------- hash chain, verify, torn lines


def raw_lines(path):
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def write_lines(path, rows):
    path.write_text("".join(rows), encoding="utf-8")


@pytest.fixture
def full(run):
    """A finished ledger with requests, rounds, applied and twin lines (a twin line last)."""
    pool, ledger, records = run
    state = Ledger.replay(ledger.path)
    accepted = [r["request_id"] for r in state.requests if r["decision"] == "accept"]
    ledger.applied(accepted, "a" * 64)
    for i, rid in enumerate(accepted[:3]):
        ledger.append_twin(rid, 85 + i, sample_hash(pool[85 + i][0]), score=0.1 * i)
    return ledger


def find(rows, kind, **match):
    """1-based number of the first line of type ``kind`` whose fields match."""
    for number, row in enumerate(rows, start=1):
        record = json.loads(row)
        if record["type"] == kind and all(record.get(k) == v for k, v in match.items()):
            return number
    raise AssertionError(f"no {kind} line with {match}")


def test_every_line_is_chained_and_the_head_is_kept(full):
    rows = [json.loads(r) for r in raw_lines(full.path)]
    assert rows[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(rows, rows[1:]))
    head = json.loads(full.head_path.read_text())
    assert full.head_path.name == "ledger.head"
    assert head == {"lines": len(rows), "hash": rows[-1]["hash"]} and full.lines == len(rows)
    report = verify(full.path.parent)
    assert report.ok and report.lines == len(rows) and report.message == f"ledger ok: {len(rows)} lines"


def _tamper_sample_id(rows):
    k = find(rows, "request", decision="accept")
    record = json.loads(rows[k - 1])
    rows[k - 1] = rows[k - 1].replace(
        f'"sample_id": {record["sample_id"]},', f'"sample_id": {record["sample_id"] + 1},'
    )
    return k


def _flip_decision(rows):
    k = find(rows, "request", decision="accept")
    rows[k - 1] = rows[k - 1].replace('"decision": "accept"', '"decision": "reject"')
    return k


def _delete_line(rows):
    k = find(rows, "request", round=2)
    del rows[k - 1]
    return k  # caught at the line after it, which now has its number


def _change_hash(rows):
    k = 5
    record = json.loads(rows[k - 1])
    rows[k - 1] = rows[k - 1].replace(record["hash"], "f" * 64)
    return k


def _change_twin_id(rows):
    k = find(rows, "twin")
    rows[k - 1] = rows[k - 1].replace('"twin_id": 85,', '"twin_id": 95,')
    return k


def _delete_twin_line(rows):
    k = find(rows, "twin", twin_id=86)  # a twin line in the middle
    del rows[k - 1]
    return k


def _delete_last_twin_line(rows):
    del rows[-1]  # the last line: only ledger.head knows it was there
    return len(rows) + 1


@pytest.mark.parametrize(
    "tamper, reason",
    [
        (_tamper_sample_id, "does not match its hash"),
        (_flip_decision, "does not match its hash"),
        (_delete_line, "prev is not the hash of line"),
        (_change_hash, "does not match its hash"),
        (_change_twin_id, "does not match its hash"),
        (_delete_twin_line, "prev is not the hash of line"),
        (_delete_last_twin_line, "is missing"),
    ],
)
def test_verify_names_the_first_tampered_line(full, tamper, reason):
    rows = raw_lines(full.path)
    expected = tamper(rows)
    write_lines(full.path, rows)
    report = verify(full.path)
    assert not report.ok and report.line == expected, report.message
    assert reason in report.reason
    assert report.message.startswith(f"Line {expected} of ") and report.message.endswith(".")
    with pytest.raises(ValueError, match=f"Line {expected} of"):
        Ledger(full.path)  # a broken ledger is not appended to
    with pytest.raises(ValueError, match=f"Line {expected} of"):
        Ledger.replay(full.path)


def reseal(rows):
    """Recompute the whole chain (what someone rewriting the file would have to do)."""
    from healing_pl.adversary.ledger import _chain_line

    out, prev = [], GENESIS
    for row in rows:
        record = {k: v for k, v in json.loads(row).items() if k not in ("prev", "hash")}
        line, prev = _chain_line(record, prev)
        out.append(line)
    return out


def test_a_changed_line_with_a_recomputed_hash_breaks_the_next_line(full):
    rows = raw_lines(full.path)
    k = _tamper_sample_id(rows)
    rows[k - 1] = reseal(rows[:k])[k - 1]  # its own hash fixed, its prev still right
    write_lines(full.path, rows)
    report = verify(full.path)
    assert report.line == k + 1 and "prev is not the hash of line" in report.reason


def test_verify_checks_what_the_lines_mean(full, tmp_path):
    rows = raw_lines(full.path)
    # a flipped decision in a fully resealed chain still contradicts its reason
    k = _flip_decision(rows)
    fake = tmp_path / "flipped.jsonl"
    write_lines(fake, reseal(rows))
    report = verify(fake)  # no head next to it
    assert report.line == k and "does not match its reason" in report.reason
    # twin and applied lines may only name earlier accepted requests
    rows = raw_lines(full.path)
    rejected = json.loads(rows[find(rows, "request", decision="reject") - 1])["request_id"]
    for kind, record in [
        ("twin", {"type": "twin", "request_id": "0" * 32, "twin_id": 1, "twin_hash": "x", "score": None}),
        ("applied", {"type": "applied", "request_ids": [rejected], "model_sha256": "a" * 64, "round": 0}),
    ]:
        from healing_pl.adversary.ledger import _chain_line

        line, _ = _chain_line(record, json.loads(rows[-1])["hash"])
        write_lines(fake, reseal(rows) + [line])
        report = verify(fake)
        assert report.line == len(rows) + 1, kind
        assert ("no earlier line records" if kind == "twin" else "was rejected") in report.reason
    # bad JSON in the middle
    write_lines(fake, rows[:3] + ["{not json\n"] + rows[3:])
    assert verify(fake).line == 4 and verify(fake).reason == "it is not valid JSON"


def test_a_missing_head_is_reported_and_rewritten_on_opening(full):
    full.head_path.unlink()
    report = verify(full.path)
    assert not report.ok and report.line is None and "no .head file" in report.reason
    with pytest.warns(RuntimeWarning, match="no .head file"):
        Ledger(full.path)
    assert verify(full.path).ok
    full.head_path.write_text("")  # a head lost in a power cut (it is not fsynced)
    assert "not readable" in verify(full.path).reason
    with pytest.warns(RuntimeWarning, match="not readable"):
        Ledger(full.path)
    assert verify(full.path).ok


@pytest.mark.parametrize("tail", ['{"type": "request", "request_id": "ab', '{"type": "twin", "request_'])
def test_a_torn_last_line_is_moved_aside_with_a_warning(full, tail):
    before = full.path.read_text()
    with open(full.path, "a", encoding="utf-8") as f:
        f.write(tail)
    assert not verify(full.path).ok
    n = len(raw_lines(full.path))
    with pytest.warns(RuntimeWarning, match=f"line {n} was torn .* moved aside to .*ledger.jsonl.torn"):
        reopened = Ledger(full.path)
    assert full.path.read_text() == before and verify(full.path).ok
    aside = full.path.with_name("ledger.jsonl.torn")
    assert reopened.moved_aside == aside and aside.read_text() == tail + "\n"  # the evidence is kept
    assert reopened.append_round({"round": 9})  # and the chain goes on
    assert verify(full.path).ok


def test_a_complete_last_line_that_is_not_json_is_never_cut(full):
    with open(full.path, "a", encoding="utf-8") as f:
        f.write('{"type": "twin", "request_\n')
    damaged = full.path.read_bytes()
    n = len(raw_lines(full.path))
    with pytest.raises(ValueError, match=f"Line {n} of .* is broken: it is not valid JSON"):
        Ledger(full.path)
    assert full.path.read_bytes() == damaged  # not a line deleted
    assert not full.path.with_name("ledger.jsonl.torn").exists()


def test_a_keyed_chain_detects_a_consistent_rewrite(tmp_path, monkeypatch):
    from healing_pl.adversary.ledger import KEY_ENV, _chain_line

    monkeypatch.setenv(KEY_ENV, "s3cret")
    pool = Pool()
    ledger = Ledger(tmp_path)
    ledger.record(MembershipIndex(pool, PRIMARY).check([Request("u", sample_id=i) for i in range(3)]), 0)
    assert verify(tmp_path).ok
    rows = [json.loads(r) for r in raw_lines(ledger.path)]
    # an attacker without the key rewrites every line and the head consistently, as plain SHA-256
    prev, lines = "0" * 64, []
    for row in rows:
        record = {k: v for k, v in row.items() if k not in ("prev", "hash")}
        record["requester"] = "someone else"
        line, prev = _chain_line(record, prev, lambda body: __import__("hashlib").sha256(body).hexdigest())
        lines.append(line)
    ledger.path.write_text("".join(lines))
    ledger.head_path.write_text(json.dumps({"lines": len(lines), "hash": prev}) + "\n")
    report = verify(tmp_path)
    assert not report.ok and report.line == 1 and "written without a key" in report.reason
    monkeypatch.setenv(KEY_ENV, "another key")
    assert not verify(tmp_path).ok
    monkeypatch.delenv(KEY_ENV)
    assert verify(tmp_path).ok  # without the key, the rewrite is indistinguishable: that is what the key buys


def test_a_keyed_ledger_verified_without_its_key_says_so(tmp_path, monkeypatch):
    from healing_pl.adversary.ledger import KEY_ENV

    monkeypatch.setenv(KEY_ENV, "k")
    ledger = Ledger(tmp_path)
    ledger.append_round({"round": 0})
    monkeypatch.delenv(KEY_ENV)
    report = verify(tmp_path)
    assert not report.ok and f"set {KEY_ENV}" in report.reason
    with pytest.raises(ValueError, match="keyed"):
        Ledger(tmp_path)


def test_a_crash_inside_a_batch_keeps_its_whole_lines(tmp_path):
    pool = Pool()
    ledger = Ledger(tmp_path)
    membership = MembershipIndex(pool, PRIMARY)
    ledger.record(membership.check([Request("u", sample_id=i) for i in range(3)]), 0)
    head = full_head = ledger.head_path.read_text()
    # the next batch: two lines written, the third torn, the head never updated
    ledger.record(membership.check([Request("u", sample_id=i) for i in range(3, 6)]), 0)
    rows = raw_lines(ledger.path)
    write_lines(ledger.path, rows[:-1] + [rows[-1][:40]])
    ledger.head_path.write_text(head)
    with pytest.warns(RuntimeWarning, match="torn"):
        again = Ledger(tmp_path)
    assert again.lines == 5 and len(again) == 5 and verify(tmp_path).ok
    assert json.loads(ledger.head_path.read_text())["lines"] == 5 != json.loads(full_head)["lines"]
    # the rerun writes only the missing request
    again.record(membership.check([Request("u", sample_id=i) for i in range(3, 6)]), 0)
    assert len(raw_lines(ledger.path)) == 6 and verify(tmp_path).ok


def test_replay_is_idempotent_with_the_chain(full):
    pool = Pool()
    before, head = full.path.read_bytes(), full.head_path.read_bytes()
    state = Ledger.replay(full.path)
    for _ in range(2):
        run_rounds(state.rounds_of_requests(), MembershipIndex(pool, PRIMARY), Ledger(full.path), None)
        reopened = Ledger(full.path)
        assert not reopened.applied(state.applied_request_ids, "a" * 64)
        assert full.path.read_bytes() == before and full.head_path.read_bytes() == head
    assert verify(full.path).ok


# --------------------------------------------------------------------------- applied and failed


def test_applied_and_failed_say_what_became_of_accepted_requests(tmp_path):
    pool = Pool()
    ledger = Ledger(tmp_path)
    membership = MembershipIndex(pool, PRIMARY)
    ids = ledger.record(membership.check([Request("u", sample_id=i) for i in (1, 2, 3, 100)]), 0)
    accepted, rejected = ids[:3], ids[3]
    state = Ledger.replay(tmp_path)
    assert state.pending_request_ids == accepted and state.applied_request_ids == []
    # the run failed after acceptance
    assert ledger.failed(accepted[:2], "CUDA out of memory.")
    assert not ledger.failed(accepted[:2], "CUDA out of memory.")  # the same failure again: nothing new
    state = Ledger.replay(tmp_path)
    assert state.failed_request_ids == accepted[:2] and state.pending_request_ids == accepted[2:]
    # a rerun succeeded: applied supersedes failed
    assert ledger.applied(accepted, "b" * 64)
    assert not Ledger(tmp_path).applied(accepted, "b" * 64)  # a rerun to the same model appends nothing
    state = Ledger.replay(tmp_path)
    assert state.applied_request_ids == accepted and state.failed_request_ids == []
    assert state.applied_sample_ids.tolist() == [1, 2, 3]
    assert state.outcomes[accepted[0]]["model_sha256"] == "b" * 64
    rows = lines(ledger.path)
    assert [r["type"] for r in rows] == ["request"] * 4 + ["failed", "applied"]
    assert rows[4]["reason"] == "CUDA out of memory." and rows[5]["round"] == 0
    with pytest.raises(ValueError, match="rejected"):
        ledger.applied([rejected], "b" * 64)
    with pytest.raises(ValueError, match="no request"):
        ledger.failed(["0" * 32], "x")
    with pytest.raises(ValueError, match="SHA-256"):
        ledger.applied(accepted, "not a hash")
    assert verify(tmp_path).ok


def test_weights_sha256_reads_a_model_or_its_state():
    from healing_pl.adversary.ledger import weights_sha256

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    full = weights_sha256(model)
    assert full == weights_sha256(model.state_dict())
    assert weights_sha256(model.to(torch.bfloat16)) != full  # other bytes, another hash
    # by hand: each name (sorted), then its raw bytes; bfloat16 1.0 = 0x3F80, 0.5 = 0x3F00, -2.0 = 0xC000
    state = {"b": torch.tensor([-2.0], dtype=torch.bfloat16), "a": torch.tensor([1.0, 0.5], dtype=torch.bfloat16)}
    assert weights_sha256(state) == hashlib.sha256(b"a\x80\x3f\x00\x3f" + b"b\x00\xc0").hexdigest()


class _DataModule:
    def __init__(self):
        self.pool = type("P", (), {"train": Pool()})()
        self.primary_ids = PRIMARY
        self.targets = Pool().targets
        self.num_classes = 3


def test_all_rejected_requests_are_recorded_before_the_error(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from healing_pl.phases import forget

    monkeypatch.setattr(forget, "select_forget_ids", lambda *a: torch.tensor([90, 100, 100, 119]))
    ledger = Ledger(tmp_path)
    with pytest.raises(ValueError, match="all 4 unlearn requests were rejected"):
        forget.request_forget_set(SimpleNamespace(name="random"), None, _DataModule(), ledger)
    rows = lines(ledger.path)
    assert [r["decision"] for r in rows] == ["reject"] * 4
    assert [r["reason"] for r in rows] == ["not_a_member"] * 4
    # some accepted: the forget set carries their ledger ids
    monkeypatch.setattr(forget, "select_forget_ids", lambda *a: torch.tensor([5, 100, 6]))
    found = forget.request_forget_set(SimpleNamespace(name="random"), None, _DataModule(), ledger)
    assert found.ids.tolist() == [5, 6] and len(found.request_ids) == 2
    assert [ledger.request_id_for_sample(i) for i in (5, 6)] == list(found.request_ids)
    # a forget set that would leave nothing to train on: accepted, then failed
    monkeypatch.setattr(forget, "select_forget_ids", lambda *a: PRIMARY)
    with pytest.raises(ValueError, match="whole primary set"):
        forget.request_forget_set(SimpleNamespace(name="everything"), None, _DataModule(), ledger)
    state = Ledger.replay(ledger.path)
    assert lines(ledger.path)[-1]["type"] == "failed" and "whole primary set" in lines(ledger.path)[-1]["reason"]
    assert len(state.failed_request_ids) == 80  # another requester: 80 new requests
    assert state.pending_request_ids == list(found.request_ids)  # accepted earlier, nothing said since
    assert verify(ledger.path).ok


@pytest.mark.parametrize("fails", [False, True])
def test_unlearn_phase_writes_applied_or_failed(tmp_path, monkeypatch, fails):
    from types import SimpleNamespace

    from healing_pl.callbacks import phases
    from healing_pl.phases import forget

    monkeypatch.setattr(forget, "select_forget_ids", lambda *a: torch.tensor([5, 6, 100]))
    monkeypatch.setattr(phases, "detached_copy", lambda module, hparams: torch.nn.Linear(2, 2))
    monkeypatch.setattr(phases, "inner_trainer", lambda trainer: {})
    model = torch.nn.Linear(2, 3)

    def unlearn(self, found, *args):
        if fails:
            raise RuntimeError("the gold standard ran out of memory.")
        self.unlearned_model = model
        return "outcome"

    monkeypatch.setattr(phases.UnlearnPhase, "_unlearn", unlearn)
    baseline = SimpleNamespace(epochs=1, seed=0, hparams={})
    phase = phases.UnlearnPhase(
        baseline, SimpleNamespace(name="random"), SimpleNamespace(), gold=False, run_dir=str(tmp_path)
    )
    trainer = SimpleNamespace(datamodule=_DataModule(), progress_bar_callback=None, is_global_zero=True)
    for _ in range(2):  # the rerun appends nothing
        if fails:
            with pytest.raises(RuntimeError, match="out of memory"):
                phase._compute(trainer, None)
        else:
            assert phase._compute(trainer, None) == "outcome"
    rows = lines(tmp_path / "ledger.jsonl")
    assert [r["type"] for r in rows] == ["request"] * 3 + ["failed" if fails else "applied"]
    if fails:
        assert rows[-1]["reason"] == "the gold standard ran out of memory."
    else:
        from healing_pl.adversary.ledger import weights_sha256

        assert rows[-1]["model_sha256"] == weights_sha256(model)
    assert rows[-1]["request_ids"] == [rows[0]["request_id"], rows[1]["request_id"]]
    assert verify(tmp_path).ok


@pytest.mark.parametrize("key", [b"k", b"x" * 64, b"y" * 65, "\u00e9t\u00e9".encode()])
def test_the_keyed_chain_is_hmac_sha256(key):
    import hashlib
    import hmac

    from healing_pl.adversary.ledger import _hasher

    for body in (b"", b'{"type": "round"}', b"q" * 1000):
        assert _hasher(key)(body) == hmac.new(key, body, hashlib.sha256).hexdigest()
