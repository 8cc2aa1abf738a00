"""Scale-out of ``healing-pl grid``: claims are leases (a claim whose holder stopped renewing it is taken over,
whichever host wrote it), ``--keep-going`` (a failed run is recorded, the others run), one GPU per local job, the
submitit launcher (its local executor) and one console line per run.

The runner tests replace the CLI inside the forked workers with a stand-in that writes a results.json at once
(``fake_cli``), so they check the runner's logic in a second; the digits tests run the real CLI."""

import json
import os
import pathlib
import shutil
import time

import pytest
import yaml

from healing_pl.experiments import grid
from healing_pl.experiments.claims import HOST, Claims
from healing_pl.experiments.grid import GridError, LocalLauncher, Runner, pick_device, visible_devices
from healing_pl.experiments.spec import Run
from healing_pl.main import main


# --------------------------------------------------------------------------- claims as leases
class Clock:
    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now


def _events(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (out / "claims.jsonl").read_text().splitlines()]


def test_an_expired_foreign_claim_is_taken_over(tmp_path):
    run = str(tmp_path / "run")
    claim = tmp_path / "run.claim"
    claim.write_text(json.dumps({"host": "node-a"}))  # an older runner's claim on another host: no renewal time
    claims = Claims(str(tmp_path), lease_s=60)
    assert claims.claim(run) is None  # written just now: its holder may be alive
    past = time.time() - 61
    os.utime(claim, (past, past))  # its holder stopped renewing it 61 s ago
    token = claims.claim(run)
    assert token and json.loads(claim.read_text())["token"] == token
    stale = _events(tmp_path)[0]
    assert (stale["event"], stale["why"], stale["held"]) == ("stale", "expired", {"host": "node-a"})


def test_a_renewed_claim_stays_and_an_unrenewed_one_expires(tmp_path, monkeypatch):
    from healing_pl.experiments import claims as claims_module

    clock = Clock(1000.0)
    monkeypatch.setattr(claims_module, "time", clock)
    run = str(tmp_path / "run")
    holder, other = Claims(str(tmp_path), lease_s=10), Claims(str(tmp_path), lease_s=10)
    token = holder.claim(run)
    data = json.loads((tmp_path / "run.claim").read_text())
    data["host"] = "node-b"  # as if the holder ran on another host: only the lease tells whether it lives
    (tmp_path / "run.claim").write_text(json.dumps(data))
    for _ in range(3):  # renewed every 8 s: never expires
        clock.now += 8
        assert holder.renew(run) and other.claim(run) is None
    clock.now += 10.5  # no renewal for longer than the lease
    taken = other.claim(run)
    assert taken and taken != token
    assert not holder.renew(run)  # the old holder learns it lost the claim
    holder.release(run, 1, token)  # and its release leaves the new holder's claim alone
    assert json.loads((tmp_path / "run.claim").read_text())["token"] == taken


def test_a_dead_process_on_this_host_is_stale_at_once_but_a_cluster_job_waits_for_its_lease(tmp_path):
    import multiprocessing

    dead = multiprocessing.get_context("fork").Process(target=int)
    dead.start()
    dead.join()
    claims = Claims(str(tmp_path), lease_s=600)
    (tmp_path / "a.claim").write_text(json.dumps({"host": HOST, "pids": [dead.pid], "renewed": time.time()}))
    assert claims.claim(str(tmp_path / "a"))
    job = {"host": HOST, "pids": [dead.pid], "renewed": time.time(), "job": "123"}  # its runner died; the job runs
    (tmp_path / "b.claim").write_text(json.dumps(job))
    assert claims.claim(str(tmp_path / "b")) is None


# --------------------------------------------------------------------------- the runner, with a stand-in CLI
def fake_cli(argv: list[str]) -> int:
    """The CLI's stand-in in a worker: ``--fail`` in a run's arguments fails it with one error line; else it
    writes the run's results.json and the CUDA devices it saw."""
    run_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("--run_dir="))
    if "--fail" in argv:
        print("healing-pl: error: this run's knob is bad.")
        return 3
    time.sleep(float(os.environ.get("FAKE_CLI_SLEEP", "0")))
    os.makedirs(run_dir, exist_ok=True)
    record = {"phase": "fit" if argv[0] == "fit" else "heal", "healed/test/acc": 0.9, "unlearned/test/acc": 0.8}
    pathlib.Path(run_dir, "device.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
    pathlib.Path(run_dir, "wandb_run.txt").write_text(os.environ.get("WANDB_RUN_ID", "-"))
    pathlib.Path(run_dir, "results.json").write_text(json.dumps(record))
    return 0


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setattr(grid, "cli_main", fake_cli)  # the forked workers inherit it
    monkeypatch.setattr(grid, "POLL_S", 0.05)
    out = tmp_path / "out"
    out.mkdir()
    return out


def _runs(out: pathlib.Path, *cells: str) -> list[Run]:
    base = str(out / "baseline")
    runs = [Run("baseline", "fit", base, (f"--run_dir={base}",))]
    for cell in cells:
        args = (f"--run_dir={out / cell}", *(["--fail"] if "bad" in cell else []))
        runs.append(Run(cell, "heal", str(out / cell), args, None, base))
    return runs


def _seeded_runs(out: pathlib.Path, seeds: int, cells: tuple[str, ...]) -> list[Run]:
    """A seeded grid's runs in the grid's own order: every baseline, then each seed's cells together."""
    bases = [str(out / f"seed-{s}" / "baseline") for s in range(seeds)]
    runs = [Run(f"seed-{s}/baseline", "fit", b, (f"--run_dir={b}",), s) for s, b in enumerate(bases)]
    for s, b in enumerate(bases):
        for cell in cells:
            run_dir = str(out / f"seed-{s}" / cell)
            runs.append(Run(f"seed-{s}/{cell}", "heal", run_dir, (f"--run_dir={run_dir}",), s, b))
    return runs


def test_runs_start_in_turns_over_the_seeds_so_two_jobs_start_different_seeds(fake):
    runs = _seeded_runs(fake, 3, ("heal-none", "heal-raw", "heal-random"))
    order = [run.name for run in grid.start_order(runs)]
    assert order == [
        *(f"seed-{s}/baseline" for s in range(3)),
        *(f"seed-{s}/heal-none" for s in range(3)),
        *(f"seed-{s}/heal-raw" for s in range(3)),
        *(f"seed-{s}/heal-random" for s in range(3)),
    ]
    one = _runs(fake, "heal-a", "heal-b", "heal-c")  # one baseline: the grid's own order
    assert grid.start_order(one) == one
    # a runner claims in that order: with one job the claims follow it exactly
    Runner(str(fake), 1, [], bar=False).execute(runs)
    assert [e["run"] for e in _events(fake) if e["event"] == "claim"] == order


def test_keep_going_runs_the_other_cells_records_the_failure_and_names_it(fake, capsys):
    runs = _runs(fake, "heal-a", "heal-bad", "heal-c")
    with pytest.raises(GridError) as err:
        Runner(str(fake), 1, [], keep_going=True, bar=False).execute(runs)
    assert err.value.code == 3
    assert str(err.value).startswith("1 of 4 runs failed: heal-bad (exit 3); the other runs finished")
    assert all((fake / name / "results.json").exists() for name in ("baseline", "heal-a", "heal-c"))
    failure = json.loads((fake / "failures.json").read_text())["heal-bad"]
    assert failure["code"] == 3 and failure["error"] == "healing-pl: error: this run's knob is bad."
    assert failure["log"] == str(fake / "heal-bad.log")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("4 runs in ") and lines[-1].endswith(", 1 failed")
    assert [line.split()[:2] for line in lines[:4]] == [
        ["[1/4]", "baseline"],
        ["[2/4]", "heal-a"],
        ["[3/4]", "heal-bad"],
        ["[4/4]", "heal-c"],
    ]
    assert "FAILED (exit 3): healing-pl: error: this run's knob is bad." in lines[2]
    assert "healed 90.00% (unlearned 80.00%)" in lines[1] and "ETA" in lines[1] and "ETA" not in lines[3]
    # the command is in the run folder, not on the console
    assert (fake / "heal-a" / "command.txt").read_text() == f"healing-pl heal --run_dir={fake / 'heal-a'}\n"


def test_without_keep_going_the_first_failure_stops_the_grid(fake, capsys):
    runs = _runs(fake, "heal-bad", "heal-c")
    with pytest.raises(GridError, match=r"run 'heal-bad' failed with exit status 3: healing-pl: error: this run"):
        Runner(str(fake), 1, [], bar=False).execute(runs)
    assert not (fake / "heal-c").exists()


def test_a_failed_baseline_fails_its_runs_without_waiting_for_it(fake):
    runs = _runs(fake, "heal-a")
    runs[0] = Run("baseline", "fit", runs[0].run_dir, (*runs[0].args, "--fail"))
    with pytest.raises(GridError, match=r"2 of 2 runs failed: baseline \(exit 3\), heal-a \(exit 1\)"):
        Runner(str(fake), 1, [], keep_going=True, bar=False).execute(runs)
    assert json.loads((fake / "failures.json").read_text())["heal-a"]["error"] == "its baseline baseline failed"


def test_the_runner_takes_over_the_claim_of_a_runner_that_stopped_renewing_it(fake, capsys):
    runs = _runs(fake, "heal-a")
    (fake / "heal-a.claim").write_text(json.dumps({"host": "node-a", "pids": [1], "renewed": time.time()}))
    start = time.monotonic()
    Runner(str(fake), 1, [], lease_s=1.0, bar=False).execute(runs)
    assert (fake / "heal-a" / "results.json").exists() and time.monotonic() - start >= 0.9
    waiting = capsys.readouterr().err.splitlines()  # said once, not once per look
    assert len(waiting) == 1 and waiting[0].startswith("waiting for heal-a: claimed by node-a; taken over if not")
    assert [e["why"] for e in _events(fake) if e["event"] == "stale"] == ["expired"]


def test_the_runner_looks_again_as_soon_as_a_local_run_ends(fake, monkeypatch):
    # it waits on its workers, not for the next poll: three runs one after another take far less than one poll
    monkeypatch.setattr(grid, "RUNNING_POLL_S", 10.0)
    start = time.monotonic()
    Runner(str(fake), 1, [], bar=False).execute(_runs(fake, "heal-a", "heal-b"))
    assert time.monotonic() - start < 10.0  # polling: at least 30 s
    assert all((fake / name / "results.json").exists() for name in ("baseline", "heal-a", "heal-b"))


def test_each_local_job_gets_its_own_gpu(fake, monkeypatch):
    monkeypatch.setenv("FAKE_CLI_SLEEP", "0.5")  # both jobs run at once
    runs = [Run(n, "fit", str(fake / n), (f"--run_dir={fake / n}",)) for n in ("a", "b", "c")]
    Runner(str(fake), 2, [], launcher=LocalLauncher(["2", "5"]), bar=False).execute(runs)
    seen = [(fake / n / "device.txt").read_text() for n in ("a", "b", "c")]
    assert seen[:2] == ["2", "5"] and seen[2] in ("2", "5")


def test_a_baseline_trained_for_a_sweep_agent_is_not_logged_as_the_agents_run(fake, monkeypatch):
    monkeypatch.setenv("WANDB_RUN_ID", "sweep-run-7")  # what `wandb agent` sets for the run it starts
    runs = _runs(fake, "heal-a")
    Runner(str(fake), 1, [], sweep=True, bar=False).execute(runs)
    assert (fake / "baseline" / "wandb_run.txt").read_text() == "-"
    assert (fake / "heal-a" / "wandb_run.txt").read_text() == "sweep-run-7"


def test_gpu_assignment():
    assert pick_device(["0", "1"], []) == "0"
    assert pick_device(["0", "1"], ["0"]) == "1"
    assert pick_device(["0", "1", "2"], ["0", "1", None]) == "2"
    assert pick_device(["0", "1"], ["0", "1", "0"]) == "1"  # more jobs than GPUs: the least used
    assert pick_device(["0"], []) is None and pick_device([], []) is None  # one GPU or CPU: nothing changes


def test_visible_devices_follow_cuda_visible_devices(monkeypatch):
    for value, expected in [
        ("2,3", ["2", "3"]),
        ("", []),
        ("0,-1,2", ["0"]),
        ("GPU-ab12, GPU-cd34", ["GPU-ab12", "GPU-cd34"]),
    ]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_devices() == expected


# --------------------------------------------------------------------------- submitit: the job's construction
class FakeExecutor:
    def __init__(self):
        self.parameters, self.submitted = {}, []

    def update_parameters(self, **kwargs):
        self.parameters.update(kwargs)

    def submit(self, fn, *args):
        self.submitted.append((fn, args))

        class Job:
            job_id = "4242"

        return Job()


def test_a_submitit_job_runs_the_local_runners_command_into_the_same_folder(fake):
    pytest.importorskip("submitit")
    launcher = grid.SubmititLauncher(
        str(fake / "submitit" / "%j"), cluster="local", grid="tiny", timeout_min=30, gpus_per_node=1
    )
    assert launcher.executor.cluster == "local"
    assert (launcher.executor.parameters["timeout_min"], launcher.executor.parameters["gpus_per_node"]) == (30, 1)
    launcher.executor = FakeExecutor()
    run = _runs(fake, "heal-a")[1]
    runner = Runner(str(fake), 4, ["--trainer.enable_progress_bar=false"], launcher=launcher, bar=False)
    token = runner.claims.claim(run.run_dir)
    runner._start(run, token, [])
    [(fn, args)] = launcher.executor.submitted
    argv = [*run.argv, "--trainer.enable_progress_bar=false"]
    assert fn is grid.run_cell_job
    assert args == (str(fake), run.run_dir, argv, f"{fake / 'heal-a'}.log", token, runner.claims.lease_s)
    assert (fake / "heal-a" / "command.txt").read_text() == f"healing-pl {' '.join(argv)}\n"
    assert launcher.executor.parameters["name"] == "tiny:heal-a"
    assert json.loads((fake / "heal-a.claim").read_text())["job"] == "4242"  # judged by its lease from now on


def test_bad_launcher_settings_stop_with_one_sentence(in_tmp, configs_dir, capsys):
    spec = _spec(configs_dir)
    path = in_tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    for extra, words in [
        (["--submitit_cluster", "local"], "--submitit_cluster needs --launcher submitit."),
        (["--slurm_gpus", "1"], "--slurm_gpus needs --launcher submitit."),
        (["--lease", "0"], "the lease must be a positive number of seconds, got 0.0."),
    ]:
        assert main(["grid", str(path), "--out", "out", *extra]) == 2
        assert capsys.readouterr().err.strip() == f"healing-pl grid: error: {words}"
    assert sorted(os.listdir(in_tmp)) == ["grid.yaml"]


# --------------------------------------------------------------------------- digits grids with the real CLI
def _spec(configs_dir, **axes) -> dict:
    """A digits grid of one baseline (copied in from the session's) and the heal runs of ``axes``."""
    return {
        "name": "scale",
        "config": f"{configs_dir}/digits.yaml",
        "fit": {"trainer.max_epochs": 1, "wandb.enabled": False},
        "heal": {
            "adversary": "ClassSelector",
            "adversary.target_class": 1,
            "unlearn": "Fisher",
            "unlearn.alpha": 1.0e-6,
            "unlearn.repeats": 1,
            "unlearn.cache_dir": None,
            "heal.epochs": 1,
            "heal.gold": False,
            "twins.metric": "RawL2",
            "wandb.enabled": False,
        },
        "axes": axes or {"budget": [{"adversary.budget": 5}, {"adversary.budget": 6}]},
    }


def _grid_with_baseline(root: pathlib.Path, spec: dict, baseline) -> tuple[str, pathlib.Path]:
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = root / "out"
    shutil.copytree(pathlib.Path(baseline).parents[1], out / "baseline")  # the session's trained digits baseline
    return str(path), out


@pytest.mark.slow
def test_keep_going_on_digits_takes_over_a_dead_hosts_claim_and_finishes_the_other_cell(
    in_tmp, configs_dir, digits_baseline, capsys
):
    # the second cell's budget exceeds the training set: it passes the parser check and fails when it runs
    spec = _spec(configs_dir, budget=[{"adversary.budget": 5}, {"adversary.budget": 100000}])
    path, out = _grid_with_baseline(in_tmp, spec, digits_baseline)
    claim = out / "heal-5.claim"
    claim.write_text(json.dumps({"host": "node-a"}))  # left by a runner on another host, an hour ago
    os.utime(claim, (time.time() - 3600, time.time() - 3600))
    assert main(["grid", path, "--out", str(out), "--keep-going"]) == 2  # the failed run's exit status
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("healing-pl grid: error: 1 of 2 runs failed: heal-100000 (exit 2); the other runs finished")
    lines = captured.out.splitlines()
    assert lines[0].startswith("[1/2] heal-5 ") and "healed " in lines[0] and "ETA" in lines[0]
    assert lines[1].startswith("[2/2] heal-100000 ") and "FAILED (exit 2): healing-pl: error: The budget" in lines[1]
    assert lines[2].startswith("2 runs in ") and lines[2].endswith(", 1 failed")
    assert (out / "heal-5" / "results.json").exists() and (out / "report.md").exists()
    assert "The budget (100000 samples)" in json.loads((out / "failures.json").read_text())["heal-100000"]["error"]
    assert [e["why"] for e in _events(out) if e["event"] == "stale"] == ["expired"]
    command = (out / "heal-5" / "command.txt").read_text()
    assert command.startswith("healing-pl heal --config ") and "--run_dir=" in command
    assert "healing-pl heal" not in captured.out  # the command is not echoed


@pytest.mark.slow
def test_the_submitit_launcher_runs_a_grid_that_the_report_covers(in_tmp, configs_dir, digits_baseline, capsys):
    pytest.importorskip("submitit")
    path, out = _grid_with_baseline(in_tmp, _spec(configs_dir), digits_baseline)
    assert main(["grid", path, "--out", str(out), "--launcher", "submitit", "--submitit_cluster", "local"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[1/2] heal-") and lines[1].startswith("[2/2] heal-") and lines[2].startswith("2 runs")
    assert len(list((out / "submitit").glob("*_result.pkl"))) == 2  # two submitit jobs ran them
    for cell in ("heal-5", "heal-6"):
        assert (out / cell / "results.json").exists()
        assert (
            (out / cell / "command.txt").read_text().startswith(f"healing-pl heal --config {configs_dir}/digits.yaml")
        )
    assert main(["report", str(out), "--output", str(in_tmp / "report.json")]) == 0
    covered = {os.path.normpath(r["run_dir"]) for r in json.loads((in_tmp / "report.json").read_text())["runs"]}
    assert {str(out / "heal-5"), str(out / "heal-6")} <= covered


def test_a_worker_killed_by_a_signal_is_named_as_such():
    from healing_pl.experiments.grid import _exit_code, _killed_by

    assert _exit_code(-9) == 137 and _killed_by(137).startswith("its process was killed by SIGKILL")
    assert _killed_by(2) == "" and _killed_by(128) == ""
