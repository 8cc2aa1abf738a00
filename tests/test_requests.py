"""--requests FILE: real unlearn requests (by id, hash or image) instead of the adversary, end to end on digits."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from healing_pl.adversary.ledger import verify
from healing_pl.adversary.membership import Request, sample_hash
from healing_pl.adversary.requests import image_hash, read_requests
from healing_pl.data.datasets import build_pool
from healing_pl.main import main

QUIET = ["--trainer.enable_progress_bar=false", "--wandb.enabled=false"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, configs_dir):
    root = tmp_path_factory.mktemp("requests-baseline")
    run = root / "fit"
    args = ["fit", "--config", f"{configs_dir}/digits.yaml", f"--run_dir={run}", "--trainer.max_epochs=1", *QUIET]
    assert main(args) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    splits = torch.load(ckpt, weights_only=False)["HealingDataModule"]["splits"]
    return ckpt, [int(i) for i in splits["primary"]], [int(i) for i in splits["backup"]]


@pytest.fixture(scope="module")
def pool():
    return build_pool("digits").train


def _write(path, lines) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def _png(dataset, sample_id: int, path) -> None:
    """A pool sample as an 8-bit PNG (the exact 8-bit encoding of the stored image)."""
    pixels = (dataset.images[sample_id, 0] * 255.0).round().clamp(0, 255).byte().numpy()
    Image.fromarray(np.asarray(pixels), mode="L").save(path)


def _args(subcommand, configs_dir, ckpt, run, requests, *extra):
    return [
        subcommand,
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={ckpt}",
        f"--run_dir={run}",
        f"--requests={requests}",
        "--unlearn=Fisher",
        "--unlearn.alpha=1e-9",
        f"--unlearn.cache_dir={run.parent / 'cache'}",
        *QUIET,
        *extra,
    ]


def _ledger(run) -> list[dict]:
    return [json.loads(x) for x in (run / "ledger.jsonl").read_text().splitlines()]


def test_image_of_a_pool_sample_hashes_like_the_sample(tmp_path, pool):
    _png(pool, 7, tmp_path / "x.png")
    assert image_hash(str(tmp_path / "x.png"), pool) == sample_hash(pool[7][0])


def test_unlearn_mixed_requests_forget_exactly_the_accepted(in_tmp, configs_dir, baseline, pool):
    ckpt, primary, backup = baseline
    p0, p1, p2 = primary[:3]
    (in_tmp / "img").mkdir()
    _png(pool, p2, in_tmp / "img" / "erin.png")
    requests = _write(
        in_tmp / "requests.jsonl",
        [
            {"requester": "alice", "sample_id": p0},
            {"requester": "bob", "sample_hash": sample_hash(pool[p1][0])},
            {"requester": "carol", "sample_id": backup[0]},  # never trained on
            "",  # blank lines are skipped
            {"requester": "dave", "sample_hash": sample_hash(pool[p0][0]), "kind": "benign"},  # p0 again
            {"requester": "erin", "image": "img/erin.png"},
            {"requester": "frank", "sample_hash": sample_hash(pool[backup[1]][0])},  # an unknown hash
        ],
    )
    run = in_tmp / "unlearn"
    assert main(_args("unlearn", configs_dir, ckpt, run, requests)) == 0
    r = json.loads((run / "results.json").read_text())
    assert r["forget/ids"] == [p0, p1, p2] and r["forget/count"] == 3
    assert r["adversary/selector"] == "requests" and r["requests/file"] == requests
    assert r["requests/count"] == 6 and r["requests/rejected"] == 3
    lines = [x for x in _ledger(run) if x["type"] == "request"]
    assert [x["requester"] for x in lines] == ["alice", "bob", "carol", "dave", "erin", "frank"]
    assert [x["reason"] for x in lines] == ["member", "member", "not_a_member", "duplicate", "member", "not_a_member"]
    assert [x["decision"] for x in lines] == ["accept", "accept", "reject", "reject", "accept", "reject"]
    assert [x["kind"] for x in lines] == ["user", "user", "user", "benign", "user", "user"]
    assert [x["named_by"] for x in lines] == ["id", "hash", "id", "hash", "hash", "hash"]
    applied = [x for x in _ledger(run) if x["type"] == "applied"]
    accepted = [x["request_id"] for x in lines if x["decision"] == "accept"]
    assert len(applied) == 1 and applied[0]["request_ids"] == accepted


def test_heal_with_a_requests_file(in_tmp, configs_dir, baseline):
    ckpt, primary, _ = baseline
    ids = primary[10:15]
    requests = _write(in_tmp / "r.jsonl", [{"requester": f"u{i}", "sample_id": i} for i in ids])
    run = in_tmp / "heal"
    assert main(_args("heal", configs_dir, ckpt, run, requests, "--heal.epochs=1", "--twins.metric=RawL2")) == 0
    r = json.loads((run / "results.json").read_text())
    assert r["forget/ids"] == ids and r["adversary/selector"] == "requests"
    assert len(r["twins/pairs"]) == 5 and r["healed/test/acc_epoch_1"] == r["healed/test/acc"]  # one heal epoch
    assert sorted(x["twin_id"] for x in _ledger(run) if x["type"] == "twin") == sorted(
        p["twin_id"] for p in r["twins/pairs"]
    )


def test_stream_applies_the_file_in_order(in_tmp, configs_dir, baseline):
    ckpt, primary, backup = baseline
    ids = [primary[30], primary[20], backup[0], primary[40], primary[25]]
    requests = _write(in_tmp / "r.jsonl", [{"requester": "owner", "sample_id": i} for i in ids])
    run = in_tmp / "stream"
    assert main(_args("stream", configs_dir, ckpt, run, requests, "--stream.round_size=2")) == 0
    r = json.loads((run / "results.json").read_text())
    lines = [x for x in _ledger(run) if x["type"] == "request"]
    assert [x["sample_id"] for x in lines] == ids and [x["round"] for x in lines] == [0, 0, 1, 1, 2]
    assert [x["reason"] for x in lines] == ["member", "member", "not_a_member", "member", "member"]
    assert [x["n_accepted"] for x in r["stream/rounds"]] == [2, 1, 1]
    assert r["stream/unlearned_count"] == 4 and r["stream/n_user"] == 5
    assert r["adversary/selector"] == "requests" and r["requests/file"] == requests
    applied = [x for x in _ledger(run) if x["type"] == "applied"]  # every round that unlearned, with its model
    assert [a["round"] for a in applied] == [0, 1, 2] and [len(a["request_ids"]) for a in applied] == [2, 1, 1]
    assert len({a["model_sha256"] for a in applied}) == 3
    assert verify(run).ok


def test_a_stream_whose_requests_are_all_rejected_exits_2(in_tmp, configs_dir, baseline, capsys):
    ckpt, _, backup = baseline
    requests = _write(in_tmp / "r.jsonl", [{"requester": "owner", "sample_id": i} for i in backup[:3]])
    run = in_tmp / "stream"
    capsys.readouterr()
    assert main(_args("stream", configs_dir, ckpt, run, requests)) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("healing-pl: error:")]
    assert errors == [
        "healing-pl: error: all 3 requests of the stream were rejected (3 not_a_member); nothing to unlearn."
    ]
    lines = _ledger(run)  # the documented trace of a failed request: its rejection, and no applied line
    assert [x["reason"] for x in lines if x["type"] == "request"] == ["not_a_member"] * 3
    assert not (run / "results.json").exists() and verify(run).ok


def _read(tmp_path, pool, lines, **kwargs):
    return read_requests(_write(tmp_path / "r.jsonl", lines), pool, **kwargs)


def test_image_paths_stay_inside_the_root_and_say_nothing_about_the_outside(tmp_path, pool):
    (tmp_path / "inner").mkdir()
    _png(pool, 3, tmp_path / "inner" / "ok.png")
    _png(pool, 3, tmp_path / "outside.png")
    (tmp_path / "inner" / "link.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "inner" / "inner-link.png").symlink_to(tmp_path / "inner" / "ok.png")
    req = _write(tmp_path / "inner" / "r.jsonl", [{"requester": "a", "image": "ok.png"}])
    assert read_requests(req, pool).requests[0].sample_hash == sample_hash(pool[3][0])
    assert _read(tmp_path / "inner", pool, [{"requester": "a", "image": "inner-link.png"}]).requests
    messages = []
    for image in ("../outside.png", "../nowhere.png", str(tmp_path / "outside.png"), "/etc/shadow", "link.png"):
        with pytest.raises(ValueError) as err:
            _read(tmp_path / "inner", pool, [{"requester": "a", "image": image}])
        assert f"image '{image}' lies outside the requests root" in str(err.value)
        messages.append(str(err.value).replace(image, "X"))
    assert len(set(messages)) == 1  # an existing and a missing file outside read the same
    # a declared root widens (or narrows) where images may come from
    wide = _read(tmp_path / "inner", pool, [{"requester": "a", "image": "../outside.png"}], root=str(tmp_path))
    assert wide.requests[0].sample_hash == sample_hash(pool[3][0])


def test_only_regular_files_are_opened_and_a_fifo_does_not_hang(tmp_path, pool):
    import os

    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "dir.png").mkdir()
    for name in ("pipe.png", "dir.png"):
        with pytest.raises(ValueError, match=f"image '{name}' cannot be read \\(no such regular file\\)"):
            _read(tmp_path, pool, [{"requester": "a", "image": name}])


def test_fields_are_bounded(tmp_path, pool):
    with pytest.raises(ValueError, match="line 1 of .* has a requester longer than 256 characters"):
        _read(tmp_path, pool, [{"requester": "x" * 257, "sample_id": 1}])
    assert _read(tmp_path, pool, [{"requester": "x" * 256, "sample_id": 1}]).requests
    with pytest.raises(ValueError, match="line 2 of .* is longer than 65,536 bytes"):
        _read(tmp_path, pool, [{"requester": "a", "sample_id": 1}, {"requester": "a" * 70_000, "sample_id": 1}])
    with pytest.raises(ValueError, match="has an image path longer than 4096"):
        _read(tmp_path, pool, [{"requester": "a", "image": "a/" * 2100}])


def test_the_file_hash_is_the_sha256_of_its_bytes_read_in_lines(tmp_path, pool):
    import hashlib

    got = _read(tmp_path, pool, [{"requester": "a", "sample_id": i} for i in range(5)] + [""])
    assert got.sha256 == hashlib.sha256((tmp_path / "r.jsonl").read_bytes()).hexdigest() and len(got.requests) == 5


MILLION = """
import resource, sys
from healing_pl.adversary.ledger import Ledger
from healing_pl.adversary.requests import read_requests
from healing_pl.data.datamodule import HealingDataModule
from healing_pl.phases.forget import request_forget_set
dm = HealingDataModule(dataset="digits")
dm.setup("fit")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
got = read_requests(sys.argv[1], None)
read = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
forget = request_forget_set(None, None, dm, ledger=Ledger(sys.argv[2]), requests=got)
done = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(got.requests), forget.requested, len(forget.ids), (read - before) // 1024, (done - before) // 1024)
"""


@pytest.mark.slow
def test_a_million_line_requests_file_stays_under_500_mb(tmp_path):
    """The peak memory that reading, deciding and writing a million requests to the ledger add to the process
    (torch's import and the pool alone are about a gigabyte); measured 15 MB to read, 240 MB in all."""
    import subprocess
    import sys

    path = tmp_path / "million.jsonl"
    with open(path, "w") as f:
        for i in range(1_000_000):
            f.write(f'{{"requester": "user-{i % 1000}", "sample_id": {i % 1500 if i < 3000 else 10**6 + i}}}\n')
    args = [sys.executable, "-c", MILLION, str(path), str(tmp_path / "run")]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    n, requested, accepted, read_mb, total_mb = map(int, out.stdout.split())
    assert n == requested == 1_000_000 and 0 < accepted <= 1500
    assert read_mb < 50 and total_mb < 500, (read_mb, total_mb)
    assert verify(tmp_path / "run").ok


def test_columns_give_back_the_requests_as_written(tmp_path, pool):
    """Ids (a negative one and one beyond 64 bits, both only rejectable), hashes, images and kinds come back as
    the Request each line names, by index, negative index, slice and iteration."""
    _png(pool, 5, tmp_path / "five.png")
    h = sample_hash(pool[2][0])
    lines = [
        {"requester": "a", "sample_id": 7},
        {"requester": "b", "sample_hash": h.upper(), "kind": "adversarial"},
        {"requester": "a", "image": "five.png", "kind": "benign"},
        {"requester": "c", "sample_id": -3},
        {"requester": "a", "sample_id": 10**30},
    ]
    expected = [
        Request("a", sample_id=7, kind="user"),
        Request("b", sample_hash=h, kind="adversarial"),
        Request("a", sample_hash=sample_hash(pool[5][0]), kind="benign"),
        Request("c", sample_id=-3, kind="user"),
        Request("a", sample_id=10**30, kind="user"),
    ]
    got = _read(tmp_path, pool, lines).requests
    assert len(got) == 5 and list(got) == expected and got[1:4] == expected[1:4] and got[-1] == expected[-1]
    with pytest.raises(IndexError):
        got[5]


def test_a_file_decided_in_chunks_writes_the_ledger_one_batch_would(tmp_path, pool, monkeypatch):
    """Duplicates and repeats of one requester straddle the chunk boundaries: the same decisions, the same
    request ids (occurrence numbers run across chunks) and the same accepted set as one batch."""
    from healing_pl.adversary.ledger import Ledger
    from healing_pl.data.datamodule import HealingDataModule
    from healing_pl.phases import forget

    dm = HealingDataModule(dataset="digits")
    dm.setup("fit")
    primary = [int(i) for i in dm.primary_ids]
    named = [primary[0], primary[1], primary[0], primary[2], primary[1], 10**6, primary[0], 10**6, primary[3]]
    lines = [{"requester": "u" if i % 3 else "v", "sample_id": sid} for i, sid in enumerate(named)]
    requests = _read(tmp_path, pool, lines)

    def ledger_of(chunk: int, run: str):
        monkeypatch.setattr(forget, "CHUNK", chunk)
        got = forget.request_forget_set(None, None, dm, ledger=Ledger(tmp_path / run), requests=requests)
        entries = [json.loads(x) for x in (tmp_path / run / "ledger.jsonl").read_text().splitlines()]
        return got, [(e["request_id"], e["reason"]) for e in entries]

    whole, whole_lines = ledger_of(10_000, "whole")
    chunked, chunked_lines = ledger_of(2, "chunked")
    assert chunked_lines == whole_lines and len(whole_lines) == len(named)
    assert len({rid for rid, _ in whole_lines}) == len(named)  # every request its own id
    assert chunked.ids.tolist() == whole.ids.tolist() == primary[:4]
    assert chunked.request_ids == whole.request_ids and chunked.reasons == whole.reasons
    assert whole.reasons == {"member": 4, "duplicate": 3, "unknown_id": 2}


def test_occurrences_count_repeats_exactly():
    from collections import Counter

    from healing_pl.adversary.ledger import Occurrences

    rng = np.random.default_rng(0)
    pairs = [(f"r{a}", f"id:{b}") for a, b in rng.integers(0, 30, size=(2000, 2))]
    occurrences, exact = Occurrences(), Counter()
    for pair in pairs:
        assert occurrences.next(*pair) == exact[pair]
        exact[pair] += 1


def test_requests_root_from_the_command_line(in_tmp, configs_dir, baseline, pool, capsys):
    """--requests_root lets images lie beside the requests file's folder; without --requests, or naming no
    folder, it stops before anything is written."""
    ckpt, primary, _ = baseline
    (in_tmp / "images").mkdir()
    (in_tmp / "lists").mkdir()
    _png(pool, primary[4], in_tmp / "images" / "x.png")
    requests = _write(in_tmp / "lists" / "r.jsonl", [{"requester": "a", "image": "../images/x.png"}])
    run = in_tmp / "run"
    assert main(_args("unlearn", configs_dir, ckpt, run, requests, f"--requests_root={in_tmp}")) == 0
    assert json.loads((run / "results.json").read_text())["forget/ids"] == [primary[4]]
    for extra, expected in (
        ([], "image '../images/x.png' lies outside the requests root"),
        ([f"--requests_root={in_tmp / 'nowhere'}"], f"requests_root '{in_tmp / 'nowhere'}' is not a folder."),
    ):
        other = in_tmp / f"run-{len(extra)}"
        capsys.readouterr()
        assert main(_args("unlearn", configs_dir, ckpt, other, requests, *extra)) == 2
        errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("healing-pl: error:")]
        assert len(errors) == 1 and expected in errors[0], errors
        assert not other.exists() or not any(other.iterdir())
    no_file = [a for a in _args("unlearn", configs_dir, ckpt, in_tmp / "run-x", requests) if "--requests=" not in a]
    capsys.readouterr()
    assert main([*no_file, f"--requests_root={in_tmp}"]) == 2
    assert "give --requests too" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, r"requests file '[^']*r\.jsonl' does not exist\.$"),
        ([{"requester": "a", "sample_id": 1}, '{"requester": "b", "sample_id": '], r"line 2 of .* is not valid JSON"),
        ([{"requester": "a"}], r"line 1 of requests file '[^']*' names no sample;"),
        (
            [{"requester": "a", "sample_id": 1, "sample_hash": "0" * 64}],
            r"names its sample 2 ways \(sample_id, sample_hash\)",
        ),
        ([{"requester": "a", "sample_id": 1, "user": "x"}], r"line 1 of .* has an unknown key 'user'"),
        ([{"requester": "a", "image": "missing.png"}], r"line 1 of .*: image 'missing\.png' cannot be read"),
        ([{"requester": "a", "image": "../../etc/passwd"}], r"line 1 of .*: image '\.\./\.\./etc/passwd' lies outside"),
        ([{"requester": "a", "image": "/etc/shadow"}], r"line 1 of .*: image '/etc/shadow' lies outside the requests"),
        ([{"requester": "r" * 300, "sample_id": 1}], r"line 1 of .* has a requester longer than 256 characters"),
        ([{"requester": "a", "image": "broken.png"}], r"line 1 of .*: image '[^']*broken\.png' cannot be read"),
    ],
)
def test_bad_requests_files_exit_2_and_write_nothing(in_tmp, configs_dir, baseline, capsys, content, expected):
    ckpt, _, _ = baseline
    (in_tmp / "broken.png").write_text("not a png")
    path = in_tmp / "r.jsonl"
    if content is not None:
        _write(path, content)
    run = in_tmp / "run"
    capsys.readouterr()
    assert main(_args("unlearn", configs_dir, ckpt, run, path)) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("healing-pl: error:")]
    assert len(errors) == 1 and re.search(expected, errors[0]) and errors[0].endswith("."), errors
    assert not run.exists() or not any(run.iterdir())


def test_a_file_naming_a_whole_class_is_whole_class_forgetting(in_tmp, configs_dir, baseline, pool):
    """Emptying one class is a supported setting (not a refusal): the heal runs and forgets exactly the class."""
    ckpt, primary, _ = baseline
    sevens = [i for i in primary if int(pool[i][1]) == 7]
    requests = _write(in_tmp / "r.jsonl", [{"requester": "owner", "sample_id": i} for i in sevens])
    run = in_tmp / "heal"
    assert main(_args("heal", configs_dir, ckpt, run, requests, "--heal.epochs=1", "--twins.metric=RawL2")) == 0
    r = json.loads((run / "results.json").read_text())
    assert sorted(r["forget/ids"]) == sorted(sevens) and r["forget/classes"][7] == len(sevens)
