"""``healing-pl ledger verify``: through the entry point, as a user runs it."""

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from healing_pl.adversary.ledger import Ledger
from healing_pl.adversary.membership import MembershipIndex, Request
from healing_pl.main import main


@pytest.fixture
def run(tmp_path):
    pool = TensorDataset(torch.arange(40.0).reshape(20, 2), torch.zeros(20, dtype=torch.long))
    ledger = Ledger(tmp_path / "run")
    membership = MembershipIndex(pool, torch.arange(10))
    ids = ledger.record(membership.check([Request("u", sample_id=i) for i in (1, 2, 3, 15)]), 0)
    ledger.applied(ids[:3], "c" * 64)
    ledger.append_twin(ids[0], 12, "h", 0.5)
    return tmp_path / "run"


def test_an_intact_ledger_passes(run, capsys):
    assert main(["ledger", "verify", str(run)]) == 0
    assert capsys.readouterr().out.strip() == "ledger ok: 6 lines"
    assert main(["ledger", "verify", str(run / "ledger.jsonl")]) == 0  # the file itself


def test_a_tampered_ledger_names_its_first_broken_line(run, capsys):
    path = run / "ledger.jsonl"
    rows = path.read_text().splitlines(keepends=True)
    rows[1] = rows[1].replace('"decision": "accept"', '"decision": "reject"')
    path.write_text("".join(rows))
    assert main(["ledger", "verify", str(run)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"Line 2 of {path} is broken: ") and out[0].endswith(".")


def test_a_deleted_last_line_is_caught_by_the_head(run, capsys):
    path = run / "ledger.jsonl"
    rows = path.read_text().splitlines(keepends=True)
    assert json.loads(rows[-1])["type"] == "twin"
    path.write_text("".join(rows[:-1]))
    assert main(["ledger", "verify", str(run)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("Line 6 of") and "is missing: the .head file records 6 lines" in out


def test_a_missing_ledger_exits_2(tmp_path, capsys):
    assert main(["ledger", "verify", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"healing-pl ledger: error: There is no ledger at {tmp_path / 'nothing' / 'ledger.jsonl'}."


def test_usage_errors_exit_2(capsys):
    assert main(["ledger"]) == 2
    assert "healing-pl ledger: error: the following arguments are required: command" in capsys.readouterr().err
    assert main(["ledger", "check", "x"]) == 2
    assert "healing-pl ledger: error: argument command: invalid choice: 'check'" in capsys.readouterr().err


def test_verify_without_a_path_is_one_sentence(capsys):
    assert main(["ledger", "verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "healing-pl ledger verify: error: the following arguments are required: path; "
        "see 'healing-pl ledger verify --help'."
    ]


def test_a_keyed_ledger_verifies_only_with_its_key(run, capsys, monkeypatch):
    from healing_pl.adversary.ledger import KEY_ENV, Ledger

    keyed = run.parent / "keyed"
    monkeypatch.setenv(KEY_ENV, "k1")
    Ledger(keyed).append_round({"round": 0})
    assert main(["ledger", "verify", str(keyed)]) == 0
    monkeypatch.setenv(KEY_ENV, "k2")
    assert main(["ledger", "verify", str(keyed)]) == 1
    monkeypatch.delenv(KEY_ENV)
    assert main(["ledger", "verify", str(keyed)]) == 1
    assert f"set {KEY_ENV}" in capsys.readouterr().out
