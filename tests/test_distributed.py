"""fit and heal under DDP (2 CPU processes) against the same commands on one process.

The datamodule splits every global batch across the ranks (``ShardedBatches``) and DDP averages the
ranks' gradients, so two ranks train like one process; every file is written once, by rank zero.
Both of Lightning's launchers run: ``fit`` under ``ddp`` (the README's: the command itself is rank zero
and starts the other rank by running its own command line again), ``heal`` and a failing command under
``ddp_fork`` (the command forks both ranks); ``heal`` under ``ddp_spawn`` (the same launcher, each rank a new
process) is marked slow.
"""

import contextlib
import faulthandler
import json
import os
import subprocess
import sys

import pytest

from healing_pl.main import main

TESTS = os.path.dirname(os.path.abspath(__file__))
DDP = ["--trainer.devices=2", "--trainer.strategy=ddp_spawn"]
LAUNCHED = ["--trainer.devices=2", "--trainer.strategy=ddp"]
FORKED = ["--trainer.devices=2", "--trainer.strategy=ddp_fork"]
NO_BAR = ["--trainer.enable_progress_bar=false"]


def _run(cwd, *args) -> None:
    """``healing-pl *args`` as a user runs it: the installed console script, in a new process; it must succeed."""
    exe = os.path.join(os.path.dirname(sys.executable), "healing-pl")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": TESTS, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [exe, *args, "--trainer.enable_progress_bar=false"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]


@contextlib.contextmanager
def _bounded(seconds: int = 300):
    """A command run in this process that hangs (a rank waiting for another forever) ends the test worker with
    every thread's traceback after ``seconds``, instead of stalling the suite."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _results(root):
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f == "results.json"]


def _heal_args(configs_dir, baseline) -> list[str]:
    return [
        "heal",
        "--config",
        f"{configs_dir}/digits.yaml",
        "--adversary=ClassSelector",
        "--adversary.target_class=3",
        "--adversary.budget=10",
        "--unlearn=Fisher",
        "--unlearn.alpha=1e-6",
        "--heal.epochs=2",
        "--twins.metric=RawL2",
        f"--ckpt_path={baseline}",
    ]


def _heal_on_two_ranks(root, configs_dir, baseline, name: str, strategy: str) -> None:
    """The heal command on 2 ranks under ``strategy``, run from this process (only the ranks are new processes),
    logging to W&B. A cache of its own: the two-rank heal computes its gold standard and unlearned model itself,
    on rank zero while the other rank waits (an inner training must not synchronise its metrics with the waiting
    rank)."""
    args = [*_heal_args(configs_dir, baseline), f"--run_dir={root / name}", f"--unlearn.cache_dir={root / name}-cache"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        env.chdir(root)
        with _bounded():
            assert main([*args, "--trainer.devices=2", f"--trainer.strategy={strategy}", *NO_BAR]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, configs_dir, digits_baseline):
    """Baselines and heal runs on 1 and 2 processes, from the same config and seed.

    The one-process baseline is the session's shared one-epoch digits fit; the two-rank fit repeats its command
    under ``ddp``, the two-rank heal under ``ddp_fork``. Only the two-rank heal logs to W&B (the test checks that
    rank zero alone does).
    """
    root = tmp_path_factory.mktemp("ddp")
    fit = ["fit", "--config", f"{configs_dir}/digits.yaml", "--trainer.max_epochs=1", "--wandb.enabled=false"]
    (root / "fit1").symlink_to(digits_baseline.parent.parent, target_is_directory=True)
    _run(root, *fit, f"--run_dir={root / 'fit2'}", *LAUNCHED)
    heal1 = [*_heal_args(configs_dir, digits_baseline), f"--run_dir={root / 'heal1'}"]
    assert main([*heal1, f"--unlearn.cache_dir={root / 'cache1'}", *NO_BAR, "--wandb.enabled=false"]) == 0
    _heal_on_two_ranks(root, configs_dir, digits_baseline, "heal2", "ddp_fork")
    return root


def _record(run):
    return json.loads((run / "results.json").read_text())


def test_fit_on_two_ranks_trains_like_one_process(runs):
    one, two = _record(runs / "fit1"), _record(runs / "fit2")
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["train/epochs"] == one["train/epochs"] == 1
    assert len(_results(runs / "fit2")) == 1 and (runs / "fit2" / "checkpoints" / "last.ckpt").is_file()
    # the full test set, evaluated once on rank zero: within one test digit of the one-process run
    n_test = len(json.loads((runs / "fit1" / "splits.json").read_text())["splits"]["test"])
    assert abs(one["test/acc"] - two["test/acc"]) <= 1 / n_test + 1e-12


def _same_heal_written_once(one_run, two_run) -> None:
    one, two = _record(one_run), _record(two_run)
    assert len(_results(two_run)) == 1 and two["world_size"] == 2
    # the pre-fit phases ran once, on rank zero: the same forget set, gold standard, unlearned model and twins
    assert one["forget/ids"] == two["forget/ids"] and one["twins/pairs"] == two["twins/pairs"]
    assert one["unlearned/test/acc"] == two["unlearned/test/acc"] and one["gold/test/acc"] == two["gold/test/acc"]
    assert one["gold/cached"] is False and two["gold/cached"] is False
    n_test = len(json.loads((one_run / "splits.json").read_text())["splits"]["test"])
    for epoch in (1, 2):
        key = f"healed/test/acc_epoch_{epoch}"
        assert abs(one[key] - two[key]) <= 1 / n_test + 1e-12, (key, one[key], two[key])
    # every ledger line exactly once: 10 requests, 10 twins
    lines = [json.loads(x) for x in (two_run / "ledger.jsonl").read_text().splitlines()]
    assert sorted(x["type"] for x in lines) == ["applied"] + ["request"] * 10 + ["twin"] * 10
    assert len({x["request_id"] for x in lines if x["type"] == "request"}) == 10
    # one W&B run, written by rank zero
    assert len([d for d in os.listdir(two_run / "wandb") if d.startswith("offline-run-")]) == 1


def test_heal_on_two_ranks_matches_one_process_and_writes_once(runs):
    _same_heal_written_once(runs / "heal1", runs / "heal2")


@pytest.mark.slow
def test_heal_on_two_spawned_ranks_matches_one_process_and_writes_once(runs, configs_dir, digits_baseline):
    # ddp_spawn: each rank a new process that unpickles the trainer, its callbacks and the W&B logger (about 10 s
    # of imports more than forked ranks); the W&B logger's pickling is also checked by tests/test_wandb.py
    _heal_on_two_ranks(runs, configs_dir, digits_baseline, "heal-spawned", "ddp_spawn")
    _same_heal_written_once(runs / "heal1", runs / "heal-spawned")


def test_a_failing_rank_fails_the_command(tmp_path, configs_dir, capfd, monkeypatch):
    # run in this process, its ranks forked (``ddp_fork``: the launcher and error path of ``ddp_spawn``, without
    # each rank importing anew): status 1 and the failed rank's sentence as the last line
    monkeypatch.syspath_prepend(TESTS)  # the command names the callback by its module
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["fit", "--config", f"{configs_dir}/digits.yaml", "--trainer.max_epochs=1", *FORKED]
    args += [f"--run_dir={tmp_path / 'failing'}", "--trainer.callbacks+=_ranks.RaiseOnRank", "--wandb.enabled=false"]
    with _bounded():
        assert main([*args, "--trainer.enable_progress_bar=false"]) == 1
    assert "rank 1 failed on purpose" in capfd.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "failing" / "results.json").exists()


def test_a_batch_that_does_not_split_across_ranks_stops_before_any_file(tmp_path, configs_dir, capsys):
    # checked before any process is spawned, so the command runs in this process
    args = [
        "fit",
        "--config",
        f"{configs_dir}/digits.yaml",
        "--data.batch_size=63",
        *DDP,
        f"--run_dir={tmp_path / 'odd'}",
    ]
    assert main(args) == 2
    assert "does not split across 2 devices" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "odd").exists()
