"""``healing-pl grid``: the baselines and every run of an experiment spec, then the report.

    healing-pl grid configs/grids/table4_mnist5k.yaml               # baseline + every heal run, then the table
    healing-pl grid configs/grids/table4_mnist5k.yaml --jobs 2      # two runs at a time
    healing-pl grid configs/grids/table4_mnist5k.yaml --dry_run     # check every command, print them
    healing-pl grid configs/grids/table4_mnist5k.yaml --export-sweep   # the same grid as a W&B sweep

The spec format is in :mod:`healing_pl.experiments.spec`. Every command is first checked with the
CLI's own parser (a misspelt option stops the grid before the baseline trains); then the baselines
run, then the runs, each through the same CLI as a user would (in this process with ``--jobs 1``,
else in worker processes whose output goes to ``<run_dir>.log``). A run whose ``results.json``
exists is skipped (an interrupted grid resumes), and runs are claimed atomically
(:mod:`healing_pl.experiments.claims`), so several runners on one folder split the work and each
run happens once. The report is written with :mod:`healing_pl.report`.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

from healing_pl.cli import check_run_dir
from healing_pl.cli import run_cli as cli_main
from healing_pl.experiments.claims import Claims, done
from healing_pl.experiments.spec import Run, build_runs, grid_name, load_spec
from healing_pl.files import write_atomic
from healing_pl.report.cli import OneLineParser, check_output, write_report
from healing_pl.report.tables import load_records, report

#: seconds between looks at runs that other runners hold
POLL_S = 1.0


class GridError(Exception):
    """A run of the grid failed: its exit status and one sentence."""

    def __init__(self, code: int, sentence: str):
        super().__init__(sentence)
        self.code = code


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _worker(argv: list[str], log_path: str) -> None:
    """A worker process: one run of the CLI, its output in ``log_path``; the exit status is the CLI's."""
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


class Runner:
    """Runs a grid's runs with up to ``jobs`` at a time, in order, each once across every runner of ``out``."""

    def __init__(self, out: str, jobs: int, extra: list[str]):
        self.claims = Claims(out)
        self.jobs = jobs
        self.extra = extra  # arguments every command gets (the progress bar off in a log)
        self.durations: list[float] = []
        self.started = 0
        self.context = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        )

    def _announce(self, run: Run, total: int, left: int) -> None:
        self.started += 1
        eta = ""
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
            eta = f"  ETA {_duration(mean * left / self.jobs)}"
        where = f"  (log: {os.path.normpath(run.run_dir)}.log)" if self.jobs > 1 else ""
        print(f"[{self.started}/{total}] {run.name}{eta}{where}\n    healing-pl {' '.join(run.argv)}", flush=True)

    def _ready(self, run: Run) -> bool:
        return run.baseline is None or done(run.baseline)

    def execute(self, runs: list[Run]) -> None:
        """Run every run not done yet; wait for those other runners hold. Raises GridError on a failure."""
        pending = [run for run in runs if not done(run.run_dir)]
        total = len(pending)
        running: dict[str, tuple] = {}
        try:
            while pending or running:
                for name, (proc, run, start) in list(running.items()):
                    if proc.is_alive():
                        continue
                    proc.join()
                    del running[name]
                    self._finished(run, proc.exitcode, start)
                pending = [run for run in pending if not done(run.run_dir) and run.name not in running]
                launched = False
                for run in list(pending):
                    if len(running) >= self.jobs:
                        break
                    if not self._ready(run) or not self.claims.claim(run.run_dir):
                        continue
                    pending.remove(run)
                    launched = True
                    self._announce(run, total, len(pending) + len(running) + 1)
                    if self.jobs == 1:
                        start = time.monotonic()
                        self._finished(run, cli_main(run.argv + self.extra), start)
                    else:
                        log = os.path.normpath(run.run_dir) + ".log"
                        proc = self.context.Process(target=_worker, args=(run.argv + self.extra, log), daemon=False)
                        proc.start()
                        self.claims.add_pid(run.run_dir, proc.pid)
                        running[run.name] = (proc, run, time.monotonic())
                if not launched and (pending or running):
                    time.sleep(POLL_S if not running else 0.2)
        finally:
            for proc, run, _ in running.values():  # interrupted (or another run failed): stop the workers
                proc.terminate()
                proc.join()
                self.claims.release(run.run_dir, proc.exitcode or 1)

    def _finished(self, run: Run, code: int | None, start: float) -> None:
        code = 1 if code is None else code
        self.claims.release(run.run_dir, code)
        if code:
            log = os.path.normpath(run.run_dir) + ".log"
            why = f": {_last_line(log)} (log: {log})" if self.jobs > 1 else ""
            raise GridError(code, f"run '{run.name}' failed with exit status {code}{why}.")
        if not done(run.run_dir):
            raise GridError(1, f"run '{run.name}' finished without writing {run.run_dir}/results.json.")
        self.durations.append(time.monotonic() - start)


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


def _finish(out: str, records: list[dict]) -> None:
    """The end of a finished grid (records: every finished run's results.json under ``out``):
    ``<out>/report.md``, the HTML dashboard ``<out>/dashboard.html``, and, when the grid's heal runs log to
    W&B, one summary W&B run (under ``<out>/wandb``) holding the grid's Table (method x setup x epoch x
    accuracy). The dashboard's path is the last line printed."""
    from healing_pl.tracking import grid_rows, log_grid_table

    text = report(records, out)
    print(text)
    markdown, dashboard = os.path.join(out, "report.md"), os.path.join(out, "dashboard.html")
    write_report(text, records, markdown)
    print(f"report written to {markdown}")
    write_report(text, records, dashboard, out)
    tracking = _grid_tracking(records)
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


def _check_all(runs: list[Run]) -> None:
    """Parse every command with the CLI's parser; ValueError naming the first bad run and its option."""
    from healing_pl.experiments.check import CommandChecker

    checker = CommandChecker()
    for run in runs:
        problem = checker.check(run.argv)
        if problem:
            raise ValueError(f"run '{run.name}' would fail: {problem}")


def _export(spec: dict, spec_path: str, out: str, name: str, file: str, runs: list[Run]) -> str:
    from healing_pl.experiments.check import CommandChecker
    from healing_pl.experiments.sweep import sweep_cells, sweep_yaml

    cells = sweep_cells(spec, out, name)
    text = sweep_yaml(spec, spec_path, out, name, file, [list(r.args) for r in runs if r.baseline is None])
    checker = CommandChecker()
    for argv in cells:
        problem = checker.check(argv)
        if problem:
            raise ValueError(f"the sweep's command 'healing-pl {' '.join(argv)}' would fail: {problem}")
    return text


def grid_main(argv: list[str]) -> int:
    """``healing-pl grid``: see the module docstring."""
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
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in a worker process (default 1)")
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error, already printed as one line (2)
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}.")
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
        check_run_dir(out)
        todo = [run for run in runs if not done(run.run_dir)]
        if todo or args.dry_run:
            _check_all(runs)
    except (OSError, ValueError) as err:
        print(f"healing-pl grid: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for i, run in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {run.name}\n    healing-pl {' '.join(run.argv)}")
        print(f"{len(runs)} commands checked with the CLI's parser; {len(todo)} to run.")
        return 0
    extra = [] if sys.stdout.isatty() else ["--trainer.enable_progress_bar=false"]  # one line per run in a log
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's per-run banners would drown the grid's output
    os.makedirs(out, exist_ok=True)
    try:
        Runner(out, args.jobs, extra).execute(runs)
    except GridError as err:
        print(f"healing-pl grid: error: {err}", file=sys.stderr)
        return err.code
    _finish(out, load_records([out]))
    return 0
