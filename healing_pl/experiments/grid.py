"""``healing-pl grid``: the baselines and every run of an experiment spec, then the report.

    healing-pl grid configs/grids/table4_mnist5k.yaml               # baseline + every heal run, then the table
    healing-pl grid configs/grids/table4_mnist5k.yaml --jobs 2      # two runs at a time (one GPU each if several)
    healing-pl grid configs/grids/table4_mnist5k.yaml --keep-going  # a failed run is recorded, the others run
    healing-pl grid configs/grids/table4_mnist5k.yaml --launcher submitit --slurm_partition gpu --slurm_gpus 1
    healing-pl grid configs/grids/table4_mnist5k.yaml --dry_run     # check every command, print them
    healing-pl grid configs/grids/table4_mnist5k.yaml --export-sweep   # the same grid as a W&B sweep
    healing-pl grid configs/grids/table4_mnist5k.yaml --sweep-cell --twins.metric=RawL2 ...  # one sweep agent's run

The spec format is in :mod:`healing_pl.experiments.spec`. Every command is first checked with the
CLI's own parser (a misspelt option stops the grid before the baseline trains); then the baselines
run, then the runs, each through the same CLI as a user would, in a worker process (``--jobs`` at a time;
with several visible CUDA devices each gets its own) or a submitit job (``--launcher submitit``: SLURM, or
submitit's local executor), with its output in ``<run_dir>.log`` and its command in ``<run_dir>/command.txt``.
The console prints one line per finished run (its time, its result, the ETA) under a progress bar, and the total.
A run whose ``results.json`` exists is skipped (an interrupted grid resumes), and runs are claimed with
leases (:mod:`healing_pl.experiments.claims`), so several runners on one folder, on one machine or many, split
the work, each run happens once, and a runner that died gives its runs back when its lease runs out. A failed
run stops the grid, or with ``--keep-going`` is recorded in ``<out>/failures.json`` while the others run. A W&B
sweep agent's run (``--sweep-cell``, the command of an exported sweep) is the grid's run of its parameters, in
the grid's folder. The report is written with :mod:`healing_pl.report`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from healing_pl import records as rk
from healing_pl.cli import check_run_dir
from healing_pl.cli import run_cli as cli_main
from healing_pl.console import GridConsole, duration
from healing_pl.experiments.claims import Claims, done, lease_seconds
from healing_pl.experiments.spec import Run, build_runs, grid_name, load_spec
from healing_pl.files import write_atomic
from healing_pl.report.cli import OneLineParser, check_output, write_report
from healing_pl.report.markdown import report
from healing_pl.report.tables import load_records

#: seconds between looks at runs that other runners hold
POLL_S = 1.0
#: seconds between looks at running jobs that cannot be waited on (submitit jobs); a local worker wakes the runner
#: as soon as it ends
RUNNING_POLL_S = 0.2
#: the variables a W&B agent sets for its run; a baseline trained on an agent's behalf runs without them
SWEEP_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
LAUNCHERS = ("local", "submitit")
#: the options of ``--launcher submitit``
SUBMITIT_OPTIONS = (
    "submitit_cluster",
    "submitit_folder",
    "slurm_partition",
    "slurm_account",
    "slurm_time",
    "slurm_gpus",
    "slurm_cpus",
    "slurm_mem_gb",
)
#: a submitit job's time limit unless ``--slurm_time`` says otherwise (submitit's own is 5 min on SLURM, 2 locally)
SLURM_TIME_MIN = 240
#: the file in a run folder that holds the command the grid ran
COMMAND_FILE = "command.txt"
#: the grid folder's record of the runs that failed (``--keep-going``): run name -> exit status, error, log
FAILURES_FILE = "failures.json"


class GridError(Exception):
    """A run of the grid failed: its exit status and one sentence."""

    def __init__(self, code: int, sentence: str):
        super().__init__(sentence)
        self.code = code


# --------------------------------------------------------------------------- one run in a worker process
def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the process that started it dies (a killed runner leaves no
    orphan still writing into its run folder)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker(argv: list[str], log_path: str, device: str | None = None, drop_env: tuple[str, ...] = ()) -> None:
    """A worker process: one run of the CLI, its output in ``log_path``; the exit status is the CLI's.
    ``device``: the only CUDA device it sees; ``drop_env``: variables it runs without."""
    _die_with_parent()
    for key in drop_env:
        os.environ.pop(key, None)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    log = open(log_path, "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    code = cli_main(argv)
    log.flush()
    sys.exit(code)


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _exit_code(code: int | None) -> int:
    """A process's exit status as a shell reports it: 128 + N for a signal N, 1 when unknown."""
    if code is None:
        return 1
    return 128 - code if code < 0 else code


def _killed_by(code: int) -> str:
    """What a shell-style exit status above 128 says (the worker died of a signal, e.g. SIGKILL from the kernel's
    out-of-memory killer): its last log line is then no explanation. Empty for an ordinary exit status."""
    if code <= 128:
        return ""
    try:
        name = signal.Signals(code - 128).name
    except ValueError:
        name = f"signal {code - 128}"
    return f"its process was killed by {name} (out of memory, or stopped from outside)"


def _fork_context():
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)


def start_order(runs: list[Run]) -> list[Run]:
    """``runs`` in the order a runner starts them: the baselines first, then the other runs in turns over their
    baselines (each seed's first run before any seed's second, each seed's runs in their own order).

    The runs of one seed share its unlearned start, which the cache computes once while every other command that
    needs it waits. In the grid's own order (a seed's runs together) a second job, or a second runner on the same
    folder, would start the same seed's next run and wait out that computation; in turns it starts another seed's.
    """
    turns: dict[str, int] = {}  # baseline -> how many of its runs came before
    keys = []
    for position, run in enumerate(runs):
        turn = -1 if run.baseline is None else turns.get(run.baseline, 0)  # a baseline before every turn
        if run.baseline is not None:
            turns[run.baseline] = turn + 1
        keys.append((turn, position))
    return [runs[i] for i in sorted(range(len(runs)), key=keys.__getitem__)]


def log_path(run: Run) -> str:
    return os.path.normpath(run.run_dir) + ".log"


def write_command(run_dir: str, argv: list[str]) -> str:
    """Write ``healing-pl <argv>`` into ``<run_dir>/command.txt`` (the console does not echo it)."""
    os.makedirs(run_dir, exist_ok=True)
    return write_atomic(os.path.join(run_dir, COMMAND_FILE), f"healing-pl {shlex.join(argv)}\n")


# --------------------------------------------------------------------------- GPUs of local jobs
def visible_devices() -> list[str]:
    """The CUDA devices this process may hand out: ``CUDA_VISIBLE_DEVICES`` when set, else the GPUs
    ``nvidia-smi`` lists (not CUDA itself: a runner that initialised CUDA could not fork its workers)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        devices = []
        for device in (d.strip() for d in listed.split(",")):
            if not device or device.startswith("-"):  # CUDA ignores everything from an invalid entry on
                break
            devices.append(device)
        return devices
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done_ = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return (
        [line.strip() for line in done_.stdout.splitlines() if line.strip().isdigit()] if done_.returncode == 0 else []
    )


def pick_device(devices: list[str], busy: list[str | None]) -> str | None:
    """The CUDA device of the next local job: with several ``devices``, the one the fewest running jobs use
    (``busy``: the devices of the running jobs), the first of those, so jobs go round robin; None (the job sees
    what the runner sees) with fewer than two."""
    if len(devices) < 2:
        return None
    return min(devices, key=busy.count)


# --------------------------------------------------------------------------- launchers: where a run's process runs
class _LocalJob:
    def __init__(self, process, device: str | None):
        self.process, self.device, self.error = process, device, ""

    @property
    def sentinel(self):
        """What :func:`multiprocessing.connection.wait` watches: ready as soon as the worker process ends."""
        return self.process.sentinel

    def poll(self) -> int | None:
        if self.process.is_alive():
            return None
        self.process.join()
        return _exit_code(self.process.exitcode)

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()


class LocalLauncher:
    """Each run in a worker process forked from the runner; with several CUDA devices, one device per job."""

    name = "local"

    def __init__(self, devices: list[str] | None = None):
        self.devices = list(devices or [])
        self.context = _fork_context()

    def prepare(self, logs_to_wandb: bool) -> None:
        """When the runs log to W&B, start W&B's service in the runner before the first fork, as W&B advises for
        runs in child processes (``wandb.setup()`` in the parent): each forked run then uses it instead of
        starting its own. Measured on digits heal runs forked from a runner: 3.0 s → 2.0 s a run."""
        from healing_pl.tracking import wandb_mode

        if logs_to_wandb and wandb_mode() != "disabled":
            import wandb

            wandb.setup()

    def start(self, run: Run, argv: list[str], claims: Claims, token: str, busy: list, drop_env=()) -> _LocalJob:
        device = pick_device(self.devices, busy)
        args = (argv, log_path(run), device, tuple(drop_env))
        process = self.context.Process(target=_worker, args=args, daemon=False)
        process.start()
        claims.add_pid(run.run_dir, process.pid)
        return _LocalJob(process, device)


def run_cell_job(out: str, run_dir: str, argv: list[str], log: str, token: str, lease_s: float) -> int:
    """A submitit job: one run of the grid in a worker process, whose claim (``token``) this job renews every
    quarter lease while it runs (the runner that submitted it may be gone); returns the run's exit status."""
    claims = Claims(out, lease_s)
    claims.renew(run_dir, token)
    process = _fork_context().Process(target=_worker, args=(argv, log), daemon=False)
    process.start()
    while True:
        process.join(timeout=claims.lease_s / 4)
        if process.exitcode is not None:
            return _exit_code(process.exitcode)
        claims.renew(run_dir, token)


def _job_error(err: Exception) -> str:
    """The telling line of a failed submitit job's exception (the trace's last line, not the log paths after it)."""
    skip = ("-", "You can check", "at paths", "Job (task=")
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.strip().startswith(skip)]
    return lines[-1] if lines else type(err).__name__


def _pause(running: list) -> None:
    """Wait before the runner's next look: until a running local worker ends (at once, not at the next poll: a
    grid of short runs lost up to 0.2 s a run), at most :data:`RUNNING_POLL_S` while jobs run, :data:`POLL_S` while
    none does (the runs left are held by other runners)."""
    if not running:
        time.sleep(POLL_S)
        return
    sentinels = [job.sentinel for job in running if job.sentinel is not None]
    if sentinels:
        multiprocessing.connection.wait(sentinels, timeout=RUNNING_POLL_S)
    else:
        time.sleep(RUNNING_POLL_S)


class _SubmititJob:
    #: nothing to wait on: a submitted job is looked at every :data:`RUNNING_POLL_S`
    sentinel = None

    def __init__(self, job):
        self.job, self.device, self.error = job, None, ""

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as err:  # the job itself failed (timed out, cancelled, not started): its last line
            self.error = f"submitit job {self.job.job_id}: {_job_error(err)}"
            return 1

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.job.cancel(check=False)


class SubmititLauncher:
    """Each run as a submitit job: SLURM on a cluster (``cluster`` None picks it where ``sbatch`` exists), or
    submitit's local executor (``cluster="local"``). The job runs :func:`run_cell_job`: the same command as a local
    worker, into the same run folder, its output in the same log. ``parameters``: submitit's (``timeout_min``,
    ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``slurm_partition``, ``slurm_account``, ...)."""

    name = "submitit"

    def __init__(self, folder: str, cluster: str | None = None, grid: str = "grid", **parameters):
        try:
            import submitit
        except ImportError:
            raise ValueError("--launcher submitit needs the submitit package (pip install submitit).") from None
        try:
            self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
            self.executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
        except (ValueError, NameError, RuntimeError, AssertionError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"submitit refused the launcher's settings: {first.rstrip('.')}.") from None
        self.grid = grid

    def start(self, run: Run, argv: list[str], claims: Claims, token: str, busy: list, drop_env=()) -> _SubmititJob:
        self.executor.update_parameters(name=f"{self.grid}:{run.name}")
        job = self.executor.submit(run_cell_job, claims.out, run.run_dir, argv, log_path(run), token, claims.lease_s)
        claims.set_job(run.run_dir, job.job_id)
        return _SubmititJob(job)


# --------------------------------------------------------------------------- what a finished run prints
def _percent(value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "?"
    return f"{100 * value:.2f}%" if value <= 1 else f"{value:.2f}%"


def result_summary(record: dict | None) -> str:
    """A finished run's result in a few words: the healed test accuracy (from the unlearned one), a baseline's
    test accuracy, an unlearning's or a stream's final one."""
    if not record:
        return ""
    phase = record.get(rk.PHASE)
    if phase == "fit":
        value = record.get(rk.FIT_TEST_ACC, record.get(rk.BASELINE_TEST_ACC))
        return f"test {_percent(value)}"
    if phase == "heal" and rk.HEALED_TEST_ACC in record:
        unlearned = record.get(rk.UNLEARNED_TEST_ACC)
        start = f" (unlearned {_percent(unlearned)})" if unlearned is not None else ""
        return f"healed {_percent(record[rk.HEALED_TEST_ACC])}{start}"
    if phase == "stream" and rk.STREAM_FINAL_TEST_ACC in record:
        return f"final test {_percent(record[rk.STREAM_FINAL_TEST_ACC])}"
    if rk.UNLEARNED_TEST_ACC in record:
        return f"unlearned {_percent(record[rk.UNLEARNED_TEST_ACC])}"
    return "done"


def _read_record(run_dir: str) -> dict | None:
    import json

    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the runner
class Runner:
    """Runs a grid's runs with up to ``jobs`` at a time, in order, each once across every runner of ``out``.

    ``launcher``: a :class:`LocalLauncher` (default) or :class:`SubmititLauncher`; ``keep_going``: a failed run is
    recorded and the others run (GridError at the end); ``lease_s``: the claims' lease; ``sweep``: the runs are
    a W&B agent's (a baseline it trains first runs without the agent's run variables); ``bar``: the progress bar
    (None: on a terminal)."""

    def __init__(
        self,
        out: str,
        jobs: int,
        extra: list[str],
        *,
        launcher=None,
        keep_going: bool = False,
        lease_s: float | None = None,
        sweep: bool = False,
        bar: bool | None = None,
    ):
        self.claims = Claims(out, lease_s)
        self.out = out
        self.jobs = jobs
        self.extra = extra  # arguments every command gets (the progress bar off: the output goes to a log)
        self.launcher = launcher or LocalLauncher()
        self.keep_going = keep_going
        self.sweep = sweep
        self.bar = bar
        self.durations: list[float] = []
        self.failed: dict[str, tuple[int, str]] = {}  # run_dir -> (exit status, last error line)
        self.console: GridConsole | None = None

    def _ready(self, run: Run) -> bool:
        return run.baseline is None or done(run.baseline)

    def _start(self, run: Run, token: str, busy: list):
        argv = run.argv + self.extra
        write_command(run.run_dir, argv)
        drop = SWEEP_ENV if self.sweep and run.baseline is None else ()
        return self.launcher.start(run, argv, self.claims, token, busy, drop)

    def execute(self, runs: list[Run]) -> None:
        """Run every run not done yet; wait for those other runners hold. Raises GridError on a failure (with
        ``keep_going``: at the end, naming every failed run)."""
        pending = start_order([run for run in runs if not done(run.run_dir)])
        total = len(pending)
        if not total:
            return
        width = max((len(run.name) for run in pending), default=0)
        self.console = console = GridConsole(total, width=width, enabled=self.bar)
        running: dict[str, tuple] = {}
        waited: set[str] = set()  # the runs held elsewhere that the console named
        renewed = time.monotonic()
        try:
            while pending or running:
                for name, (job, run, start) in list(running.items()):
                    code = job.poll()
                    if code is None:
                        continue
                    del running[name]
                    self._finished(run, code, start, job)
                kept = []
                for run in pending:
                    if done(run.run_dir):  # another runner ran it
                        console.finished(run.name, None, f"{result_summary(_read_record(run.run_dir))} (elsewhere)")
                    elif run.baseline in self.failed:
                        self._failed(run, 1, f"its baseline {os.path.relpath(run.baseline, self.out)} failed", 0.0)
                    else:
                        kept.append(run)
                pending = kept
                launched, held = False, 0
                for run in list(pending):
                    if len(running) >= self.jobs:
                        break
                    if not self._ready(run):
                        continue
                    token = self.claims.claim(run.run_dir)
                    if not token:
                        held += 1
                        self._waiting(run, waited)
                        continue
                    pending.remove(run)
                    launched = True
                    busy = [job.device for job, _, _ in running.values()]
                    running[run.name] = (self._start(run, token, busy), run, time.monotonic())
                console.running(list(running), f"{held} held by other runners" if held else "")
                if time.monotonic() - renewed > self.claims.lease_s / 4:
                    for _, run, _ in running.values():
                        if not self.claims.renew(run.run_dir):
                            print(
                                f"healing-pl grid: warning: the claim of '{run.name}' was taken over.", file=sys.stderr
                            )
                    renewed = time.monotonic()
                if not launched and (pending or running):
                    _pause([job for job, _, _ in running.values()])
        finally:
            for job, run, _ in running.values():  # interrupted (or another run failed): stop the workers
                job.stop()
                self.claims.release(run.run_dir, 1)
            console.close()
        if self.failed:
            names = ", ".join(f"{os.path.relpath(r, self.out)} (exit {c})" for r, (c, _) in self.failed.items())
            codes = {code for code, _ in self.failed.values()}
            raise GridError(
                codes.pop() if len(codes) == 1 else 1,
                f"{len(self.failed)} of {total} runs failed: {names}; the other runs finished, and "
                f"{os.path.join(self.out, FAILURES_FILE)} holds each failure's last error line.",
            )

    def _waiting(self, run: Run, waited: set[str]) -> None:
        """Say once on stderr which runner holds a run this one waits for, and when its lease runs out."""
        held = Claims.read(run.run_dir)
        if run.name in waited or held is None:
            return
        waited.add(run.name)
        who = f"{held.get('host', '?')}" + (f" (job {held['job']})" if held.get("job") else "")
        left = duration(max(self.claims.expires_in(run.run_dir, held), 0.0))
        self.console.note(f"waiting for {run.name}: claimed by {who}; taken over if not renewed within {left}")

    def _finished(self, run: Run, code: int, start: float, job) -> None:
        elapsed = time.monotonic() - start
        self.claims.release(run.run_dir, code)
        error = ""
        if code == 0 and not done(run.run_dir):
            code, error = 1, f"it finished without writing {run.run_dir}/results.json"
        if code:
            killed = _killed_by(code)
            self._failed(run, code, error or job.error or killed or _last_line(log_path(run)) or "no output", elapsed)
            return
        self.durations.append(elapsed)
        self.console.finished(run.name, elapsed, result_summary(_read_record(run.run_dir)))

    def _failed(self, run: Run, code: int, error: str, elapsed: float) -> None:
        log = log_path(run)
        self.claims.record_failure(run.run_dir, code, error, log if os.path.isfile(log) else None)
        self.console.finished(run.name, elapsed, f"FAILED (exit {code}): {error}", failed=True)
        if not self.keep_going:
            raise GridError(code, f"run '{run.name}' failed with exit status {code}: {error} (log: {log}).")
        self.failed[run.run_dir] = (code, error)


def _grid_tracking(records: list[dict]) -> dict | None:
    """The ``wandb`` settings of the grid's heal runs (from their ``config.yaml``): the first heal run that
    logs to W&B; None when no heal run does (``wandb.enabled: false``) or the grid has no heal runs."""
    import yaml

    for record in records:
        if record.get("phase") != "heal":
            continue
        path = os.path.join(os.path.dirname(record.get("_file") or ""), "config.yaml")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            settings = (yaml.safe_load(f) or {}).get("wandb") or {}
        if settings.get("enabled", True):
            return settings
    return None


def _finish(out: str, records: list[dict], partial: bool = False) -> None:
    """The end of a finished grid (records: every finished run's results.json under ``out``):
    ``<out>/report.md``, the HTML dashboard ``<out>/dashboard.html``, and, when the grid's heal runs log to
    W&B, one summary W&B run (under ``<out>/wandb``) holding the grid's Table (method x setup x epoch x
    accuracy). The dashboard's path is the last line printed. ``partial``: some runs failed (``--keep-going``):
    the report and dashboard of the runs that finished, if any but baselines did, and no W&B summary run."""
    from healing_pl.tracking import grid_rows, log_grid_table

    if partial and all(record.get(rk.PHASE) == "fit" for record in records):
        return
    text = report(records, out)
    print(text)
    markdown, dashboard = os.path.join(out, "report.md"), os.path.join(out, "dashboard.html")
    write_report(text, records, markdown)
    print(f"report written to {markdown}")
    write_report(text, records, dashboard, out)
    tracking = None if partial else _grid_tracking(records)
    if tracking is not None and grid_rows(records):
        folder = log_grid_table(
            tracking.get("group") or os.path.basename(os.path.normpath(out)),
            records,
            project=tracking.get("project") or "healing-pl",
            run_dir=out,
            entity=tracking.get("entity"),
        )
        if folder:
            print(f"W&B grid table: {os.path.relpath(folder)}")
    print(f"dashboard: {dashboard}")


def _check_all(runs: list[Run]) -> bool:
    """Parse every command with the CLI's parser; ValueError naming the first bad run and its option. Returns
    whether any run logs to W&B."""
    from healing_pl.experiments.check import CommandChecker

    checker = CommandChecker()
    logs = False
    for run in runs:
        try:
            tracking = checker.parse(run.argv).get("wandb")
        except ValueError as problem:
            raise ValueError(f"run '{run.name}' would fail: {problem}") from None
        logs = logs or bool(tracking is not None and tracking.get("enabled"))
    return logs


def _export(spec: dict, spec_path: str, out: str, name: str, file: str, runs: list[Run]) -> str:
    """The sweep file's text; every cell of the sweep is first resolved to its grid run, whose command is checked
    with the CLI's parser."""
    from healing_pl.experiments.check import CommandChecker
    from healing_pl.experiments.sweep import sweep_cells, sweep_run, sweep_yaml

    text = sweep_yaml(spec, spec_path, out, name, file, [list(r.args) for r in runs if r.baseline is None])
    checker = CommandChecker()
    for cell in sweep_cells(spec, spec_path, out):
        run = sweep_run(spec, out, cell[cell.index("--sweep-cell") + 1 :], runs)
        problem = checker.check(run.argv)
        if problem:
            raise ValueError(f"the sweep's run '{run.name}' would fail: {problem}")
    return text


def _split_sweep_cell(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """The grid's own arguments, and the W&B agent's (everything after ``--sweep-cell``; None without it)."""
    for flag in ("--sweep-cell", "--sweep_cell"):
        if flag in argv:
            i = argv.index(flag)
            return argv[:i], argv[i + 1 :]
    return argv, None


def _launcher(args, out: str, name: str):
    if args.launcher == "local":
        return LocalLauncher(visible_devices() if args.jobs and args.jobs > 1 else [])
    folder = args.submitit_folder or os.path.join(out, "submitit")
    return SubmititLauncher(
        folder,
        cluster=args.submitit_cluster,
        grid=name,
        timeout_min=args.slurm_time or SLURM_TIME_MIN,
        gpus_per_node=args.slurm_gpus,
        cpus_per_task=args.slurm_cpus,
        mem_gb=args.slurm_mem_gb,
        slurm_partition=args.slurm_partition,
        slurm_account=args.slurm_account,
    )


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog="healing-pl grid",
        description=(
            "Run an experiment spec: check every command with the CLI's parser, train the baseline(s), run every "
            "combination of the axes (finished runs are skipped, so an interrupted grid resumes; several runners "
            "on one folder split the work), then write the comparison report. Or export the spec as a W&B sweep."
        ),
    )
    parser.add_argument("grid", help="grid spec YAML (see configs/grids/)")
    parser.add_argument("--out", help="output folder (default: runs/<grid name>)")
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs at a time (default 1; with --launcher submitit: every run that is ready); each local job gets "
        "its own GPU when several are visible",
    )
    parser.add_argument(
        "--keep-going",
        "--keep_going",
        dest="keep_going",
        action="store_true",
        help="a failed run is recorded in <out>/failures.json and the other runs go on; the grid exits non-zero at "
        "the end naming the failed runs",
    )
    parser.add_argument(
        "--lease",
        type=float,
        metavar="SECONDS",
        help="a claim not renewed for this long (its runner died, on any host) is taken over "
        "(default $HEALING_PL_LEASE_S or 600)",
    )
    parser.add_argument(
        "--launcher", choices=LAUNCHERS, default="local", help="local worker processes (default) or submitit jobs"
    )
    parser.add_argument(
        "--submitit_cluster",
        choices=("slurm", "local"),
        help="submitit's executor (default: SLURM where sbatch exists, else its local executor)",
    )
    parser.add_argument("--submitit_folder", help="submitit's job files (default <out>/submitit)")
    parser.add_argument("--slurm_partition", help="SLURM partition of each job")
    parser.add_argument("--slurm_account", help="SLURM account of each job")
    parser.add_argument(
        "--slurm_time", type=int, metavar="MINUTES", help=f"time limit of each job (default {SLURM_TIME_MIN})"
    )
    parser.add_argument("--slurm_gpus", type=int, metavar="N", help="GPUs of each job")
    parser.add_argument("--slurm_cpus", type=int, metavar="N", help="CPUs of each job")
    parser.add_argument("--slurm_mem_gb", type=float, metavar="GB", help="memory of each job")
    parser.add_argument(
        "--dry_run", action="store_true", help="check every command with the CLI's parser and print them; run nothing"
    )
    parser.add_argument(
        "--export-sweep",
        "--export_sweep",
        dest="export_sweep",
        nargs="?",
        const="",
        metavar="FILE",
        help="write the grid as a W&B sweep YAML (default FILE: sweeps/<spec file name>) instead of running it",
    )
    parser.add_argument(
        "--sweep-cell",
        "--sweep_cell",
        dest="sweep_cell",
        action="store_true",
        help="the rest of the command line is a W&B agent's --name=value parameters: run the grid's run of those "
        "parameters (its baseline first if missing), in the grid's folder",
    )
    return parser


def _sweep_cell(spec: dict, out: str, cell_args: list[str], runs: list[Run]) -> list[Run]:
    """The runs a W&B agent's command runs: the grid's run of its parameters, after its baseline."""
    from healing_pl.experiments.sweep import sweep_run

    run = sweep_run(spec, out, cell_args, runs)
    return [r for r in runs if r.run_dir == run.baseline] + [run]


def grid_main(argv: list[str]) -> int:
    """``healing-pl grid``: see the module docstring."""
    argv, cell_args = _split_sweep_cell(list(argv))
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error, already printed as one line (2)
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        if args.jobs is not None and args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}.")
        lease_s = lease_seconds(args.lease)
        if args.launcher == "local":
            given = [o for o in SUBMITIT_OPTIONS if getattr(args, o) is not None]
            if given:
                raise ValueError(f"--{given[0]} needs --launcher submitit.")
        spec = load_spec(args.grid)
        name = grid_name(spec, args.grid)
        out = args.out or os.path.join("runs", name)
        runs = build_runs(spec, out, name)
        if args.export_sweep is not None:
            file = args.export_sweep or os.path.join("sweeps", os.path.basename(args.grid))
            check_output(file)
            text = _export(spec, args.grid, out, name, file, runs)
            write_atomic(file, text)
            print(f"sweep written to {file}")
            return 0
        if cell_args is not None:
            runs = _sweep_cell(spec, out, cell_args, runs)
        check_run_dir(out)
        todo = [run for run in runs if not done(run.run_dir)]
        logs_to_wandb = _check_all(runs) if todo or args.dry_run else False
        launcher = None if args.dry_run or not todo else _launcher(args, out, name)
    except (OSError, ValueError) as err:
        print(f"healing-pl grid: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for i, run in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {run.name}\n    healing-pl {' '.join(run.argv)}")
        print(f"{len(runs)} commands checked with the CLI's parser; {len(todo)} to run.")
        return 0
    extra = ["--trainer.enable_progress_bar=false"]  # each run's output goes to its log: no bars there
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's per-run banners would drown the grid's output
    os.makedirs(out, exist_ok=True)
    jobs = args.jobs or (len(runs) if args.launcher == "submitit" else 1)
    runner = Runner(
        out, jobs, extra, launcher=launcher, keep_going=args.keep_going, lease_s=lease_s, sweep=cell_args is not None
    )
    if isinstance(launcher, LocalLauncher):
        launcher.prepare(logs_to_wandb)
    try:
        runner.execute(runs)
    except GridError as err:
        if runner.failed and cell_args is None:  # --keep-going: the report of the runs that finished
            _finish(out, load_records([out]), partial=True)
        print(f"healing-pl grid: error: {err}", file=sys.stderr)
        return err.code
    if cell_args is not None:
        return 0
    _finish(out, load_records([out]))
    return 0
