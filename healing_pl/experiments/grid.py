"""``healing-pl grid``: a baseline and a grid of heal (or unlearn, stream) runs from one YAML, then the table.

    healing-pl grid configs/grids/table4_mnist5k.yaml   # baseline + every heal run, then the table

The grid runs every command through the same CLI as a user would (in this
process), skips runs whose ``results.json`` exists (an interrupted grid
resumes), and reports with :mod:`healing_pl.report`.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

import yaml

from healing_pl.cli import check_run_dir
from healing_pl.cli import run_cli as cli_main
from healing_pl.report.cli import OneLineParser, write_report
from healing_pl.report.tables import load_records, report


def _overrides(pairs: dict) -> list[str]:
    return [f"--{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in (pairs or {}).items()]


def load_spec(path: str) -> dict:
    """Read and check a grid YAML (every check before any run starts or any file is written)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"grid file '{path}' does not exist.")
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"'{path}' is not valid YAML{at}.") from None
    if not isinstance(spec, dict) or "config" not in spec or "axes" not in spec:
        raise ValueError(f"'{path}' must be a mapping with 'config' and 'axes' keys.")
    if not isinstance(spec["config"], str) or not os.path.isfile(spec["config"]):
        raise FileNotFoundError(f"the grid's config '{spec['config']}' (in '{path}') does not exist.")
    command = spec.get("command", "heal")
    if command not in ("heal", "unlearn", "stream"):
        raise ValueError(f"the grid's command must be heal, unlearn or stream, got '{command}'.")
    for key in ("fit", command):
        if not isinstance(spec.get(key) or {}, dict):
            raise ValueError(f"the grid's '{key}' overrides must be a mapping of option: value.")
    axes = spec["axes"]
    if not isinstance(axes, dict) or not axes:
        raise ValueError(f"the grid's axes must be a mapping of axis name: list of override mappings, got {axes!r}.")
    for name, values in axes.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, dict) and v for v in values):
            raise ValueError(
                f"the grid's axes entry '{name}' must be a non-empty list of override mappings "
                f"(e.g. [{{twins.metric: none}}]), got {values!r}."
            )
    return spec


def grid_main(argv: list[str]) -> int:
    """Run a baseline and a grid of heal (or unlearn, stream) runs from one YAML, then print the tables.

    The YAML names the base ``config``, overrides for ``fit`` and for every run of ``command``
    (heal by default), and ``axes``: lists of override sets whose product is the grid.
    """
    parser = OneLineParser(
        prog="healing-pl grid",
        description=(
            "Train a baseline, then run `heal` for every combination of the grid's axes (finished runs are "
            "skipped, so an interrupted grid resumes), then print the comparison table."
        ),
    )
    parser.add_argument("grid", help="grid YAML (see configs/grids/)")
    parser.add_argument("--out", help="output folder (default: runs/<grid name>)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands without running them")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error, already printed as one line (2)
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        spec = load_spec(args.grid)
        name = spec.get("name") or os.path.splitext(os.path.basename(args.grid))[0]
        out = args.out or os.path.join("runs", str(name))
        check_run_dir(out)
    except (OSError, ValueError) as err:
        print(f"healing-pl grid: error: {err}", file=sys.stderr)
        return 2
    common = ["--config", spec["config"], f"--wandb.group={name}"]
    if not sys.stdout.isatty():  # progress bars in a terminal; one line per run in a log
        common.append("--trainer.enable_progress_bar=false")
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's per-run banners would drown the grid's output
    baseline_dir = os.path.join(out, "baseline")
    commands = []
    if not os.path.isfile(os.path.join(baseline_dir, "results.json")):
        commands.append(["fit", *common, f"--run_dir={baseline_dir}", *_overrides(spec.get("fit"))])
    ckpt = os.path.join(baseline_dir, "checkpoints", "last.ckpt")
    subcommand = spec.get("command", "heal")
    axes = [spec["axes"][k] for k in spec["axes"]]
    seen: set[str] = set()
    for combo in itertools.product(*axes):
        merged = dict(spec.get(subcommand) or {})
        for part in combo:
            merged.update(part)
        label = "-".join(f"{v:g}" if isinstance(v, float) else str(v) for part in combo for v in part.values())
        run_dir = os.path.join(out, f"{subcommand}-{label}")
        if run_dir in seen:
            print(f"healing-pl grid: error: two runs of the grid would share the folder '{run_dir}'.", file=sys.stderr)
            return 2
        seen.add(run_dir)
        if not os.path.isfile(os.path.join(run_dir, "results.json")):
            commands.append([subcommand, *common, f"--ckpt_path={ckpt}", f"--run_dir={run_dir}", *_overrides(merged)])
    for i, command in enumerate(commands, 1):
        print(f"[{i}/{len(commands)}] healing-pl {' '.join(command)}", flush=True)
        if not args.dry_run:
            code = cli_main(command)
            if code:
                return code
    if args.dry_run:
        return 0
    text = report(load_records([out]))
    print(text)
    write_report(text, load_records([out]), os.path.join(out, "report.md"))
    print(f"report written to {os.path.join(out, 'report.md')}")
    return 0
