"""Interrupted runs: a rerun into the same run folder ends with the uninterrupted run's results and ledger.

The stream test stops in-process after round 0 (a KeyboardInterrupt once round 0 is in the ledger); the slow tests run
``healing-pl`` in a subprocess and SIGKILL it at points of ``heal``, ``grid`` and ``stream`` found by polling
the run folder, then rerun the same command.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from healing_pl.main import main

QUIET = ["--trainer.enable_progress_bar=false", "--wandb.enabled=false"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, configs_dir):
    # two epochs (not the shared one-epoch baseline): the crash tests' Fisher alpha collapses a one-epoch model
    run = tmp_path_factory.mktemp("baseline") / "fit"
    args = ["fit", "--config", f"{configs_dir}/digits.yaml", f"--run_dir={run}", "--trainer.max_epochs=2", *QUIET]
    assert main(args) == 0
    return run / "checkpoints" / "last.ckpt"


def _stream_args(configs_dir, baseline, run, cache):
    return [
        "stream",
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        f"--run_dir={run}",
        "--adversary=ClassSelector",
        "--adversary.target_class=5",
        "--adversary.budget=6",
        "--stream.benign_ratio=0.5",
        "--stream.round_size=4",
        "--stream.heal=true",
        "--stream.heal_epochs=1",
        "--twins.metric=RawL2",
        "--unlearn=Fisher",
        "--unlearn.alpha=1e-6",
        f"--unlearn.cache_dir={cache}",
        *QUIET,
    ]


def _ledger(run: Path) -> list[dict]:
    """The ledger's lines without their times (and without the hash chain, which covers the times)."""
    drop = {"time", "hash", "prev", "prev_hash"}
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in (run / "ledger.jsonl").read_text().splitlines()
    ]


def _results(run: Path) -> dict:
    """results.json without times and the run folder."""
    record = json.loads((run / "results.json").read_text())
    return {k: v for k, v in record.items() if "time_s" not in k and k not in ("run_dir", "stream/ledger")}


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_a_stream_stopped_after_a_round_resumes_to_the_uninterrupted_result(in_tmp, configs_dir, baseline, monkeypatch):
    whole, cut = in_tmp / "whole", in_tmp / "cut"
    # separate caches: the resumed run must recompute, not read the uninterrupted run's unlearned models
    assert main(_stream_args(configs_dir, baseline, whole, in_tmp / "cache-whole")) == 0
    from healing_pl.adversary.ledger import Ledger

    append_round = Ledger.append_round

    def stop_after_round_0(ledger, record: dict) -> bool:
        written = append_round(ledger, record)
        if int(record["round"]) == 0:
            raise KeyboardInterrupt("stopped after round 0")
        return written

    monkeypatch.setattr(Ledger, "append_round", stop_after_round_0)
    assert main(_stream_args(configs_dir, baseline, cut, in_tmp / "cache-cut")) != 0
    assert not (cut / "results.json").exists()
    assert sum(x["type"] == "round" for x in _ledger(cut)) == 1 and (cut / "stream" / "round-0000.pt").exists()
    monkeypatch.setattr(Ledger, "append_round", append_round)
    assert main(_stream_args(configs_dir, baseline, cut, in_tmp / "cache-cut")) == 0

    a, b = json.loads((whole / "results.json").read_text()), json.loads((cut / "results.json").read_text())
    assert b["stream/final/test/acc"] == a["stream/final/test/acc"]
    assert b["stream/curve"] == a["stream/curve"] and b["stream/rounds"] == a["stream/rounds"]
    assert b["stream/unlearned_count"] == a["stream/unlearned_count"] == 12
    twins = [(x["request_id"], x["twin_id"]) for x in _ledger(whole) if x["type"] == "twin"]
    assert [(x["request_id"], x["twin_id"]) for x in _ledger(cut) if x["type"] == "twin"] == twins
    assert len({t for _, t in twins}) == 12  # no spare handed out twice
    assert _ledger(cut) == _ledger(whole)  # each request, twin and round exactly once, in the same order
    last = "stream/round-0002.pt"
    for name, value in _weights(whole / last).items():
        assert torch.equal(_weights(cut / last)[name], value), name
    removed = torch.load(cut / last, weights_only=True)["removed"]
    assert sorted(removed.tolist()) == sorted(x["sample_id"] for x in _ledger(whole) if x.get("decision") == "accept")


# --------------------------------------------------------------------------- SIGKILL at points of heal, grid, stream
CLI = str(Path(sys.executable).with_name("healing-pl"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _run(args: list[str], cwd: Path) -> None:
    done = subprocess.run([CLI, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def _kill_when(args: list[str], cwd: Path, ready, timeout: float = 300.0) -> None:
    """Start ``healing-pl args``, poll ``ready()`` in a tight loop and SIGKILL the process once it holds."""
    proc = subprocess.Popen([CLI, *args], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait() == -signal.SIGKILL
                return
            time.sleep(0.002)
        pytest.fail(f"the kill point was never reached (exit status {proc.poll()}): {proc.stderr.read()[-2000:]!r}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _lines(path: Path, kind: str) -> int:
    try:
        return sum(f'"type": "{kind}"' in line for line in path.read_text().splitlines())
    except OSError:
        return 0


def _figures(run: Path, root: Path) -> dict:
    """results.json with the root folder abstracted, without times, run_dir, cache hits (a rerun after a kill
    finds what the killed run cached) and the baseline file's hash (a checkpoint holds its own folder's path)."""
    record = json.loads((run / "results.json").read_text().replace(str(root), "<root>"))
    drop = ("run_dir", "baseline/sha256")
    if isinstance((record.get("experiment") or {}).get("baseline"), dict):  # the identity keeps that hash too
        record["experiment"]["baseline"].pop("sha256", None)
    return {k: v for k, v in record.items() if "time_s" not in k and "cached" not in k and k not in drop}


def _same_run(run: Path, root: Path, reference: Path, reference_root: Path) -> None:
    assert _figures(run, root) == _figures(reference, reference_root)
    assert _ledger(run) == _ledger(reference)


def _heal(configs_dir, baseline, root: Path) -> list[str]:
    return [
        "heal",
        "--config",
        f"{configs_dir}/digits.yaml",
        f"--ckpt_path={baseline}",
        f"--run_dir={root / 'heal'}",
        "--adversary=ClassSelector",
        "--adversary.target_class=3",
        "--adversary.budget=10",
        "--unlearn=Fisher",
        "--unlearn.alpha=1e-5",
        "--unlearn.repeats=2",
        f"--unlearn.cache_dir={root / 'cache'}",
        "--twins.metric=RawL2",
        "--heal.epochs=3",
        *QUIET,
    ]


@pytest.fixture(scope="module")
def heal_reference(tmp_path_factory, configs_dir, baseline):
    root = tmp_path_factory.mktemp("heal-reference")
    _run(_heal(configs_dir, baseline, root), root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "requests",  # right after the ledger's request lines: the gold standard is training
        "gold",  # the gold standard is cached: the unlearning is running
        "fine_tune",  # config.yaml and splits.json are written: the fine-tune is running
    ],
)
def test_heal_killed_then_rerun_gives_the_same_results(tmp_path, configs_dir, baseline, heal_reference, point):
    run, cache = tmp_path / "heal", tmp_path / "cache"
    ready = {
        "requests": lambda: _lines(run / "ledger.jsonl", "request") >= 10,
        "gold": lambda: any(cache.glob("gold-*.pt")),
        "fine_tune": lambda: (run / "splits.json").exists(),
    }[point]
    args = _heal(configs_dir, baseline, tmp_path)
    _kill_when(args, tmp_path, ready)
    assert not (run / "results.json").exists()
    _run(args, tmp_path)
    _same_run(run, tmp_path, heal_reference / "heal", heal_reference)


def _grid(root: Path, configs_dir) -> Path:
    spec = {
        "name": "crash",
        "config": f"{configs_dir}/digits.yaml",
        "command": "heal",
        "fit": {"trainer.max_epochs": 1, "wandb.enabled": False},
        "heal": {
            "adversary": "ClassSelector",
            "adversary.target_class": 3,
            "adversary.budget": 8,
            "unlearn": "Fisher",
            "unlearn.repeats": 1,
            "unlearn.on_collapse": "keep",  # alpha 1e-5 takes the 1-epoch baseline to chance: heal from there
            "heal.epochs": 1,
            "twins.metric": "RawL2",
            "wandb.enabled": False,
        },
        "axes": {"alpha": [{"unlearn.alpha": 1e-6}, {"unlearn.alpha": 1e-5}]},
    }
    path = root / "grid.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


@pytest.mark.slow
def test_grid_killed_between_runs_then_rerun_gives_the_same_results(tmp_path, configs_dir):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    for root in (ref, cut):
        root.mkdir()
    _run(["grid", str(_grid(ref, configs_dir)), f"--out={ref / 'out'}"], ref)
    second = cut / "out" / "heal-1e-05"
    _kill_when(["grid", str(_grid(cut, configs_dir)), f"--out={cut / 'out'}"], cut, (second / "ledger.jsonl").exists)
    assert (cut / "out" / "heal-1e-06" / "results.json").exists() and not (second / "results.json").exists()
    _run(["grid", str(_grid(cut, configs_dir)), f"--out={cut / 'out'}"], cut)
    for name in ("baseline", "heal-1e-06", "heal-1e-05"):
        assert _figures(cut / "out" / name, cut) == _figures(ref / "out" / name, ref), name
    for name in ("heal-1e-06", "heal-1e-05"):
        assert _ledger(cut / "out" / name) == _ledger(ref / "out" / name), name


@pytest.fixture(scope="module")
def stream_reference(tmp_path_factory, configs_dir, baseline):
    root = tmp_path_factory.mktemp("stream-reference")
    _run(_stream_args(configs_dir, baseline, root / "s", root / "cache"), root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "round_0",  # the ledger holds round 0's summary: round 1 is starting
        "checkpoint_1",  # round 1's state is written, its summary may not be in the ledger yet
        "requests_2",  # round 2's requests are in the ledger: its unlearning is running
    ],
)
def test_stream_killed_across_rounds_then_rerun_gives_the_same_results(
    tmp_path, configs_dir, baseline, stream_reference, point
):
    run = tmp_path / "s"
    ready = {
        "round_0": lambda: _lines(run / "ledger.jsonl", "round") >= 1,
        "checkpoint_1": lambda: (run / "stream" / "round-0001.pt").exists(),
        "requests_2": lambda: _lines(run / "ledger.jsonl", "request") >= 12,
    }[point]
    args = _stream_args(configs_dir, baseline, run, tmp_path / "cache")
    _kill_when(args, tmp_path, ready)
    assert not (run / "results.json").exists()
    _run(args, tmp_path)
    _same_run(run, tmp_path, stream_reference / "s", stream_reference)
    for name, value in _weights(stream_reference / "s" / "stream" / "round-0002.pt").items():
        assert torch.equal(_weights(run / "stream" / "round-0002.pt")[name], value), name
