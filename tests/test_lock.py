"""One command per run folder: the lock, the identity a folder keeps, and two commands started together."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from healing_pl.adversary.ledger import verify
from healing_pl.lock import IDENTITY_FILE, LOCK_FILE, UNSET, RunLock, check_identity, first_difference
from healing_pl.main import main

QUIET = ["--wandb.enabled=false", "--trainer.enable_progress_bar=false"]
HOLD = (
    "import sys, time; from healing_pl.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); time.sleep(60)"
)


def _holder(folder):
    """A process that holds the lock of ``folder`` until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_lock_on_a_folder_is_refused_and_released_on_exit(tmp_path):
    run = tmp_path / "a" / "b"
    first = RunLock(run).acquire()
    assert (run / LOCK_FILE).is_file()
    with pytest.raises(ValueError, match=r"is in use by another healing-pl command \(process \d+\)"):
        RunLock(run).acquire()
    first.release()
    assert not (tmp_path / "a").exists()  # it created a/ and a/b/ and left them empty: both gone
    with RunLock(run):
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    proc = _holder(tmp_path / "run")
    with pytest.raises(ValueError, match="in use by another healing-pl command"):
        RunLock(tmp_path / "run").acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunLock(tmp_path / "run"):  # the OS released the lock with the process
        pass


def test_the_identity_is_kept_and_another_one_is_refused_naming_what_differs(tmp_path):
    ident = {"subcommand": "heal", "config": {"unlearn": {"class": "Fisher", "alpha": 0.1}}, "seeds": {"seed": 0}}
    assert check_identity(str(tmp_path), ident) is True
    assert json.loads((tmp_path / IDENTITY_FILE).read_text()) == ident
    assert check_identity(str(tmp_path), ident) is False  # the same experiment: a rerun resumes
    other = {**ident, "config": {"unlearn": {"class": "Fisher", "alpha": 0.2}}}
    with pytest.raises(ValueError, match=r"holds another experiment: its config\.unlearn\.alpha is 0\.1, this co"):
        check_identity(str(tmp_path), other)
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == ("b", UNSET, 2)


def test_a_lock_released_without_writing_removes_the_identity_it_wrote(tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    lock.check_identity({"x": 1})
    assert (tmp_path / "run" / IDENTITY_FILE).is_file()
    lock.release()
    assert not (tmp_path / "run").exists()


def test_a_command_on_a_held_folder_exits_2_at_once_and_touches_nothing(in_tmp, configs_dir, capsys):
    proc = _holder(in_tmp / "run")
    try:
        before = sorted(os.listdir(in_tmp / "run"))
        code = main(["fit", "--config", f"{configs_dir}/digits.yaml", "--run_dir=run", *QUIET])
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("INFO: Seed")]
        assert code == 2
        assert err == [
            f"healing-pl: error: run_dir 'run' is in use by another healing-pl command (process {proc.pid}); "
            "wait for it to finish or choose another --run_dir."
        ]
        assert sorted(os.listdir(in_tmp / "run")) == before
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def baseline(configs_dir, digits_baseline):
    return f"{configs_dir}/digits.yaml", str(digits_baseline)  # the session-wide digits baseline (conftest.py)


def test_a_command_into_a_folder_of_another_experiment_stops_before_writing(in_tmp, configs_dir, capsys):
    (in_tmp / "run").mkdir()
    held = {"subcommand": "fit", "config": {"model": {"lr": 0.5}}, "seeds": {}, "baseline": None}
    (in_tmp / "run" / IDENTITY_FILE).write_text(json.dumps(held))
    before = sorted(os.listdir(in_tmp / "run"))
    code = main(["fit", "--config", f"{configs_dir}/digits.yaml", "--run_dir=run", *QUIET])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("healing-pl: error: run_dir 'run' holds another experiment: its config.data is unset")
    assert sorted(os.listdir(in_tmp / "run")) == before


@pytest.mark.slow
def test_a_rerun_of_another_experiment_is_refused_and_the_same_one_allowed(in_tmp, baseline, capsys):
    cfg, ckpt = baseline
    unlearn = ["unlearn", "--config", cfg, f"--ckpt_path={ckpt}", "--run_dir=run", "--adversary.budget=5", *QUIET]
    assert main(unlearn + ["--unlearn=Finetune", "--unlearn.epochs=1"]) == 0
    results = (in_tmp / "run" / "results.json").read_bytes()
    capsys.readouterr()
    assert main(unlearn + ["--unlearn=Finetune", "--unlearn.epochs=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("healing-pl: error: ")
        and "holds another experiment: its config.unlearn.epochs is 1, this command's is 2" in err[-1]
    )
    assert (in_tmp / "run" / "results.json").read_bytes() == results
    assert main(unlearn + ["--unlearn=Finetune", "--unlearn.epochs=1", "--wandb.name=again"]) == 0  # same identity
    assert verify(in_tmp / "run").ok


UNLEARN_CMD = (  # imports first, then waits for its go file: both commands are ready before either runs
    "import os, sys, time; from healing_pl.main import main\n"
    "while not os.path.exists(sys.argv[5]): time.sleep(0.005)\n"
    "sys.exit(main(['unlearn', '--config', sys.argv[1], "
    "'--ckpt_path=' + sys.argv[2], '--run_dir=' + sys.argv[3], '--adversary.budget=5', '--unlearn=Finetune', "
    "'--unlearn.epochs=' + sys.argv[4], '--unlearn.cache_dir=' + sys.argv[3] + '-cache', '--wandb.enabled=false', "
    "'--trainer.enable_progress_bar=false']))"
)


@pytest.mark.slow
def test_two_commands_started_together_on_one_folder_ten_times(tmp_path, baseline):
    """Two identical commands on one folder: the one that takes the lock runs, the other exits 2 at once.

    Both processes import healing-pl first and then wait for their own go file, so neither is still importing
    torch when the other finishes (on a loaded machine, two commands merely started at the same instant can run
    one after the other, and a rerun of the same finished experiment is allowed). The first is let go, the
    second as soon as the first holds the folder (it writes its pid into the lock file after taking the lock),
    while the first still fine-tunes for 500 epochs, about 20 s (each trial with its own cache: a cached unlearned
    model would let the first finish at once). At 100 epochs the fine-tune took about 4 s, less than the second
    command's parsing and checks before it asks for the lock on a busy core, so the first could finish first and
    the second then ran as an allowed rerun of the same experiment."""
    cfg, ckpt = baseline
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(name: str):
        args = [sys.executable, "-c", UNLEARN_CMD, cfg, ckpt, str(run), "500", str(tmp_path / f"{name}.go")]
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def held() -> bool:
        path = run / LOCK_FILE
        return path.is_file() and path.read_text().strip() != ""

    for trial in range(10):
        run = tmp_path / f"run{trial}"
        first, second = start(f"first{trial}"), start(f"second{trial}")
        time.sleep(1.0)
        (tmp_path / f"first{trial}.go").touch()
        while not held() and first.poll() is None:
            time.sleep(0.005)
        (tmp_path / f"second{trial}.go").touch()
        started = time.time()
        results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
        assert [code for code, _ in results] == [0, 2], (trial, results)
        assert "is in use by another healing-pl command" in results[1][1], results[1][1]
        assert time.time() - started < 300
        assert verify(run).ok, verify(run).message


@pytest.mark.parametrize(
    "env, launched",
    [
        ({}, False),
        ({"LOCAL_RANK": "1"}, True),
        ({"RANK": "3"}, True),
        ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, False),
        ({"SLURM_NTASKS": "8", "SLURM_PROCID": "5"}, True),  # srun: Lightning sets neither RANK nor LOCAL_RANK
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, False),  # a one-task job (a submitit cell)
    ],
)
def test_only_global_rank_zero_locks_the_run_folder(monkeypatch, env, launched):
    from healing_pl.cli import _is_launched_rank

    for name in ("LOCAL_RANK", "RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _is_launched_rank() is launched
