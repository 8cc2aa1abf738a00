"""``healing-pl grid``: spec checks, the parser check before training, worker processes, claims, resume,
and the spec exported as a W&B sweep (the committed sweeps/ files, and an agent's command = the grid's run)."""

import json
import multiprocessing
import os
import pathlib
import shutil

import pytest
import yaml

from healing_pl.cli import FAMILIES
from healing_pl.experiments.check import CommandChecker
from healing_pl.experiments.spec import SEED_OPTIONS, build_runs, grid_name, load_spec, seed_args
from healing_pl.experiments.sweep import agent_args, sweep_cells, sweep_parameters, sweep_run, sweep_yaml
from healing_pl.main import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny(configs_dir, **extra) -> dict:
    """A digits grid that trains in seconds: 1 baseline epoch, Fisher, 1 heal epoch, no gold standard."""
    return {
        "name": "tiny",
        "config": f"{configs_dir}/digits.yaml",
        "fit": {"trainer.max_epochs": 1, "wandb.enabled": False},
        "heal": {
            "adversary": "ClassSelector",
            "adversary.target_class": 1,
            "adversary.budget": 5,
            "heal.epochs": 1,
            "heal.gold": False,
            "unlearn.repeats": 1,
            "unlearn.cache_dir": None,  # every run computes its own unlearning (no cache shared between runs)
            "wandb.enabled": False,
        },
        "axes": {
            "unlearn": [{"unlearn": "Fisher", "unlearn.alpha": 1.0e-6}],
            "twins": [{"twins.metric": None}, {"twins.metric": "RawL2"}],
        },
        **extra,
    }


def _write(path: pathlib.Path, spec: dict) -> str:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def _tree(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- bad specs: one sentence, nothing written
BAD = {
    "unknown-key": ({"axis": {}}, "unknown key 'axis'"),
    "missing-config": ({"config": "nowhere.yaml"}, "nowhere.yaml"),
    "axis-not-list": ({"axes": {"twins": {"twins.metric": None}}}, "'twins' must be a non-empty list"),
    "duplicate-folders": ({"axes": {"twins": [{"twins.metric": None}, {"twins.metric": None}]}}, "share the folder"),
    "seeds-not-ints": ({"seeds": [0, "one"]}, "seeds must be a non-empty list of integers"),
    "seeds-not-list": ({"seeds": 3}, "seeds must be a non-empty list of integers"),
    "seeds-and-a-seed": ({"seeds": [0, 1], "fit": {"data.seed": 3}}, "sets data.seed in 'fit'"),
    "heal-block-in-unlearn-grid": ({"command": "unlearn"}, "unknown key 'heal'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_spec_stops_with_one_sentence_before_any_file(in_tmp, configs_dir, capsys, case):
    change, words = BAD[case]
    spec = _write(in_tmp / "grid.yaml", {**_tiny(configs_dir), **change})
    before = _tree(in_tmp)
    assert main(["grid", spec, "--out", str(in_tmp / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("healing-pl grid: error: ") and words in lines[0], lines
    assert _tree(in_tmp) == before


# --------------------------------------------------------------------------- the parser check
@pytest.fixture(scope="module")
def checker():
    return CommandChecker()


def _option(config, key: str):
    """The parsed value of option ``key``; a chosen class (``--unlearn``) keeps its knobs under ``init_args``."""
    for option in FAMILIES:
        if key.startswith(option + "."):
            return config[option]["init_args"][key[len(option) + 1 :]]
    return config[key]


def test_seed_options_exist_in_every_subcommand(checker, configs_dir):
    for subcommand, keys in SEED_OPTIONS.items():
        argv = [subcommand, "--config", f"{configs_dir}/digits.yaml", *seed_args(subcommand, 7)]
        config = checker.parse(argv)
        for key in keys:
            assert _option(config, key) == 7, (subcommand, key)


def test_checker_names_the_option_of_a_bad_value(checker, configs_dir):
    base = ["heal", "--config", f"{configs_dir}/digits.yaml"]
    assert checker.check(base + ["--twins.metric=RawL2"]) is None
    assert "twins.metrc" in checker.check(base + ["--twins.metrc=null"])
    assert "unknown twin metric 'raw_l3' for --twins.metric" in checker.check(base + ["--twins.metric=raw_l3"])
    assert "use --twins.metric RawL2" in checker.check(base + ["--twins.metric=raw_l2"])  # the old name of the class
    assert "repeats" in checker.check(base + ["--unlearn.repeats=0"])


@pytest.mark.parametrize("how", [["--dry_run"], [], ["--export-sweep=sweep.yaml"]])
def test_misspelt_option_stops_the_grid_before_any_training(in_tmp, configs_dir, capsys, how):
    spec = _tiny(configs_dir)
    spec["axes"]["twins"][1] = {"twins.metrc": "RawL2"}
    path = _write(in_tmp / "grid.yaml", spec)
    before = _tree(in_tmp)
    assert main(["grid", path, "--out", str(in_tmp / "out"), *how]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("healing-pl grid: error: ")
    assert "'heal-Fisher-1e-06-RawL2' would fail: unknown option " in lines[0]
    assert "--twins.metrc=RawL2" in lines[0]
    assert _tree(in_tmp) == before and "[1/" not in captured.out  # no folder, no baseline


def test_dry_run_prints_every_command_and_writes_nothing(in_tmp, configs_dir, capsys):
    path = _write(in_tmp / "grid.yaml", _tiny(configs_dir, seeds=[0, 1]))
    assert main(["grid", path, "--out", "out", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "6 commands checked with the CLI's parser; 6 to run." in out
    assert "[1/6] seed-0/baseline" in out and "[2/6] seed-1/baseline" in out
    assert "--seed_everything=1 --data.seed=1 --unlearn.seed=1 --twins.seed=1" in out
    assert "--ckpt_path=out/seed-1/baseline/checkpoints/last.ckpt --run_dir=out/seed-1/heal-Fisher-1e-06-RawL2" in out
    assert _tree(in_tmp) == ["grid.yaml"]


# --------------------------------------------------------------------------- sweeps
GRIDS = sorted(p.name for p in (ROOT / "configs" / "grids").glob("*.yaml"))


def _grid(grid: str):
    """A committed grid as its sweep sees it: spec, spec path, name, output folder and runs."""
    spec_path = f"configs/grids/{grid}"
    spec = load_spec(spec_path)
    name = grid_name(spec, spec_path)
    out = os.path.join("runs", name)
    return spec, spec_path, name, out, build_runs(spec, out, name)


def _first_seed_cells(spec, spec_path: str, out: str, runs) -> list:
    """The grid's runs of its first seed as agents reach them, each with the sweep parameters of its cell (the
    axis values; other seeds change only seed values)."""
    first = min((r.seed for r in runs if r.seed is not None), default=None)
    cells = []
    for cell in sweep_cells(spec, spec_path, out):
        parameters = cell[cell.index("--sweep-cell") + 1 :]
        run = sweep_run(spec, out, parameters, runs)  # every cell resolves to its grid run
        if run.seed == first:
            cells.append((run, [p for p in parameters if not p.startswith("--config=")]))
    return cells


@pytest.mark.parametrize("grid", GRIDS)
def test_exported_sweeps_equal_the_committed_files(grid, monkeypatch):
    """The committed sweep is the text --export-sweep writes, every cell resolves to its grid run, and every axis
    value of the first seed passes the CLI's parser (in a few cells that together hold them all, chosen greedily;
    test_every_cell_of_the_committed_sweeps_parses, marked slow, parses them all, and --export-sweep itself checks
    every cell, tested on a small grid in test_misspelt_option_stops_the_grid_before_any_training)."""
    monkeypatch.chdir(ROOT)  # the specs name their config relative to the repository
    spec, spec_path, name, out, runs = _grid(grid)
    cells = [list(r.args) for r in runs if r.baseline is None]
    assert sweep_yaml(spec, spec_path, out, name, f"sweeps/{grid}", cells) == (ROOT / "sweeps" / grid).read_text()
    first = _first_seed_cells(spec, spec_path, out, runs)
    values = {v for _, parameters in first for v in parameters}
    checker, checked = CommandChecker(), set()
    for run, parameters in sorted(first, key=lambda cell: -len(set(cell[1]))):
        if not set(parameters) <= checked:
            assert checker.check(run.argv) is None, run.name
            checked |= set(parameters)
    assert checked == values


@pytest.mark.slow
@pytest.mark.parametrize("grid", GRIDS)
def test_every_cell_of_the_committed_sweeps_parses(grid, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec, spec_path, _, out, runs = _grid(grid)
    checker = CommandChecker()
    for run, _ in _first_seed_cells(spec, spec_path, out, runs):
        assert checker.check(run.argv) is None, run.name


def test_sweep_holds_everything_the_grid_sets(in_tmp, configs_dir, capsys):
    path = _write(in_tmp / "grid.yaml", _tiny(configs_dir, seeds=[0, 1]))
    assert main(["grid", path, "--out", "out", "--export-sweep", "sweep.yaml"]) == 0
    sweep = yaml.safe_load((in_tmp / "sweep.yaml").read_text())
    assert sweep["method"] == "grid"  # the agent runs the grid's run of its parameters, in the grid's folder
    assert sweep["command"] == ["${env}", "healing-pl", "grid", path, "--out=out", "--sweep-cell", "${args}"]
    assert sweep["parameters"]["unlearn"] == {"values": [{"class_path": "Fisher", "init_args": {"alpha": 1e-6}}]}
    assert sweep["parameters"]["twins.metric"] == {"values": ["null", "RawL2"]}
    assert sweep["parameters"]["config"]["values"][1] == {
        "seed_everything": 1,
        "ckpt_path": "out/seed-1/baseline/checkpoints/last.ckpt",
        "data": {"seed": 1},
        "unlearn": {"seed": 1},
        "twins": {"seed": 1},
    }
    assert "healing-pl fit --config" in (in_tmp / "sweep.yaml").read_text()  # the header says how to run it


# --------------------------------------------------------------------------- running: workers, claims, resume
def _claims(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (out / "claims.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory, configs_dir):
    """Two seeds × two twin metrics: 2 baselines and 4 heal runs with --jobs 2."""
    root = tmp_path_factory.mktemp("grid")
    spec = _write(root / "grid.yaml", _tiny(configs_dir, seeds=[0, 1]))
    code = main(["grid", spec, "--out", str(root / "out"), "--jobs", "2"])
    return root, spec, code


def test_two_jobs_run_every_run_exactly_once(two_jobs, capsys):
    root, spec, code = two_jobs
    out = root / "out"
    assert code == 0
    results = sorted(str(p.parent.relative_to(out)) for p in out.rglob("results.json"))
    names = [f"seed-{s}/{r}" for s in (0, 1) for r in ("baseline", "heal-Fisher-1e-06-none", "heal-Fisher-1e-06-RawL2")]
    assert results == sorted(names)
    claims = _claims(out)
    assert sorted(c["run"] for c in claims if c["event"] == "claim") == sorted(names)
    assert sorted(c["run"] for c in claims if c["event"] == "done") == sorted(names)
    assert not list(out.rglob("*.claim")) and (out / "report.md").exists()
    # seeds reached the runs: seed 1's records name seed 1, and the two seeds' baselines differ
    r0 = json.loads((out / "seed-0" / "heal-Fisher-1e-06-RawL2" / "results.json").read_text())
    r1 = json.loads((out / "seed-1" / "heal-Fisher-1e-06-RawL2" / "results.json").read_text())
    assert (r0["unlearn/seed"], r1["unlearn/seed"]) == (0, 1) and r0["baseline/sha256"] != r1["baseline/sha256"]
    # resume: a second run finds everything finished, claims nothing and only reports
    capsys.readouterr()
    assert main(["grid", spec, "--out", str(out), "--jobs", "2"]) == 0
    assert "[1/" not in capsys.readouterr().out and _claims(out) == claims


def _records_equal(a: dict, b: dict) -> None:
    def keep(key: str) -> bool:
        return key != "run_dir" and not key.endswith("time_s")

    assert sorted(k for k in a if keep(k)) == sorted(k for k in b if keep(k))
    for key in a:
        if keep(key):
            assert a[key] == b[key], key


def test_a_sweep_agents_run_is_the_grids_run_and_the_report_covers_it(two_jobs, monkeypatch, capsys):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    root, spec_path, code = two_jobs
    assert code == 0
    monkeypatch.chdir(root)
    out = root / "out"
    run = out / "seed-1" / "heal-Fisher-1e-06-RawL2"
    grid_record, grid_command = json.loads((run / "results.json").read_text()), (run / "command.txt").read_text()
    shutil.rmtree(run)  # an agent runs it instead
    spec = load_spec(spec_path)
    params = sweep_parameters(spec, str(out))
    assert list(params)[-1] == "config"  # the seeds come last: after the class an axis chooses
    cell = {"unlearn": params["unlearn"][0], "twins.metric": "RawL2", "config": params["config"][1]}
    # what W&B's agent puts in place of ${args} (its own function), and ours agrees
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in cell.items()}})["args"]
    assert args == agent_args(cell)
    assert args[-1].startswith("--config={'seed_everything': 1, 'ckpt_path': ")
    command = [c for c in sweep_cells(spec, spec_path, str(out)) if c[-len(args) :] == args]
    assert len(command) == 1 and command[0][:4] == ["grid", spec_path, f"--out={out}", "--sweep-cell"]
    capsys.readouterr()
    assert main(command[0]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("[1/1] seed-1/heal-Fisher-1e-06-RawL2 ")
    # the grid's run: the same command, into the grid's folder under the grid's name, the same figures
    assert (run / "command.txt").read_text() == grid_command and not (root / "runs").exists()
    _records_equal(json.loads((run / "results.json").read_text()), grid_record)
    assert main(["report", str(out), "--output", str(root / "report.json")]) == 0
    covered = {os.path.normpath(r["run_dir"]) for r in json.loads((root / "report.json").read_text())["runs"]}
    assert str(run) in covered


def test_a_group_axis_with_a_null_goes_through_the_sweep_to_its_grid_run(configs_dir):
    """An axis mixing ``{twins.metric: null}`` (R alone) with a two-option group is the sweep parameter ``twins``;
    what W&B's own agent writes for each value maps back to that value's grid run."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    spec = _tiny(configs_dir, seeds=[0, 1])
    spec["axes"]["twins"] = [{"twins.metric": None}, {"twins.metric": "RandomMetric", "twins.same_class": True}]
    params = sweep_parameters(spec, "out")
    assert params["twins"] == [{"metric": None}, {"metric": "RandomMetric", "same_class": True}]
    runs = build_runs(spec, "out", "tiny")
    for i, expected in enumerate(["heal-Fisher-1e-06-none", "heal-Fisher-1e-06-RandomMetric-true"]):
        cell = {"unlearn": params["unlearn"][0], "twins": params["twins"][i], "config": params["config"][1]}
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in cell.items()}})["args"]
        run = sweep_run(spec, "out", args, runs)
        assert run.seed == 1 and run.name == f"seed-1/{expected}", (args, run.name)


def test_a_sweep_cell_that_is_not_in_the_grid_stops_with_one_sentence(in_tmp, configs_dir, capsys):
    path = _write(in_tmp / "grid.yaml", _tiny(configs_dir))
    cell = ["--unlearn={'class_path': 'Fisher', 'init_args': {'alpha': 1e-06}}"]
    for agent, words in [
        ([*cell, "--twins.metric=RawL3"], "--twins.metric=RawL3 is not one of the grid's values of the parameter"),
        (cell, "the sweep cell lacks the parameter 'twins.metric'"),
        ([*cell, "--twins.metric=null", "--heal.epochs=3"], "'heal.epochs' is not a parameter of the grid's sweep"),
    ]:
        assert main(["grid", path, "--out", "out", "--sweep-cell", *agent]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("healing-pl grid: error: ") and words in lines[0], lines
    assert _tree(in_tmp) == ["grid.yaml"]


def _runner(spec: str, out: str) -> None:
    import sys

    log = open(f"{out}-runner-{os.getpid()}.log", "w")
    sys.stdout = sys.stderr = log
    sys.exit(main(["grid", spec, "--out", out]))


@pytest.mark.slow
def test_two_runners_on_one_folder_split_the_work(tmp_path, configs_dir):
    spec = _write(tmp_path / "grid.yaml", _tiny(configs_dir))
    out = str(tmp_path / "out")
    context = multiprocessing.get_context("fork")
    runners = [context.Process(target=_runner, args=(spec, out)) for _ in range(2)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    assert [r.exitcode for r in runners] == [0, 0]
    claims = _claims(tmp_path / "out")
    names = ["baseline", "heal-Fisher-1e-06-none", "heal-Fisher-1e-06-RawL2"]
    claimed = [c for c in claims if c["event"] == "claim"]
    assert sorted(c["run"] for c in claimed) == sorted(names)  # each run once
    assert len({c["pid"] for c in claimed}) == 2  # by both runners
    assert len(list((tmp_path / "out").rglob("results.json"))) == 3


def test_stale_claim_of_a_dead_process_is_taken_over(tmp_path):
    from healing_pl.experiments.claims import HOST, Claims

    claims = Claims(str(tmp_path))
    run = str(tmp_path / "run")
    dead = multiprocessing.get_context("fork").Process(target=int)
    dead.start()
    dead.join()
    (tmp_path / "run.claim").write_text(json.dumps({"pids": [dead.pid], "host": HOST}))
    assert claims.claim(run)
    assert not claims.claim(run)  # now held by this (live) process
    claims.release(run, 1)
    assert [c["event"] for c in _claims(tmp_path)] == ["stale", "claim", "failed"]
    assert not (tmp_path / "run.claim").exists()


# --------------------------------------------------------------------------- the end of a grid: dashboard and W&B table
def _dashboard_pngs(path: pathlib.Path) -> list[tuple[int, int]]:
    """The sizes of the PNG figures inlined in a dashboard."""
    import base64
    import io
    import re

    from PIL import Image

    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', path.read_text())
    return [Image.open(io.BytesIO(base64.b64decode(uri))).size for uri in uris]


@pytest.mark.slow
def test_a_grid_ends_with_its_dashboard_and_no_wandb_run_when_wandb_is_off(two_jobs, capsys):
    root, spec, code = two_jobs
    out = root / "out"
    assert code == 0
    capsys.readouterr()
    assert main(["grid", spec, "--out", str(out)]) == 0  # finished already: only the reports
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"dashboard: {out / 'dashboard.html'}"
    assert not any(line.startswith("W&B grid table") for line in lines)
    sizes = _dashboard_pngs(out / "dashboard.html")
    assert sizes and all(w > 50 and h > 50 for w, h in sizes)
    assert not (out / "wandb").exists()  # wandb.enabled: false in the spec: no summary run


def test_a_grid_with_wandb_ends_with_its_dashboard_and_the_wandb_grid_table(in_tmp, configs_dir, capsys):

    from healing_pl.tracking import GRID_COLUMNS, read_offline_run

    spec = _tiny(configs_dir)
    spec["heal"]["wandb.enabled"] = True  # the heal runs log to W&B (offline), the baseline does not
    spec["heal"]["heal.gold"] = True  # the report's Best−GS column needs the gold standard
    path = _write(in_tmp / "grid.yaml", spec)
    assert main(["grid", path]) == 0
    printed = capsys.readouterr().out
    lines = printed.strip().splitlines()
    # the healing table, printed and in report.md
    assert "| digits (small_cnn) | fisher | 5 × class |" in printed
    assert "| R |" in printed and "| T-raw_l2 |" in printed
    assert "Best−GS" in (in_tmp / "runs" / "tiny" / "report.md").read_text()
    out = in_tmp / "runs" / "tiny"
    assert lines[-1] == "dashboard: runs/tiny/dashboard.html"
    assert (out / "report.md").exists()
    # the dashboard: the accuracy curve and the twin grid of T-raw_l2 (8 pairs of 8x8 digits), each a real image
    html = (out / "dashboard.html").read_text()
    assert "<table>" in html and html.count("<img ") == len(_dashboard_pngs(out / "dashboard.html")) >= 2
    assert all(w > 50 and h > 50 for w, h in _dashboard_pngs(out / "dashboard.html"))
    # the W&B summary run under the grid's folder: job type summary, group = the grid's name, and the Table
    (folder,) = (out / "wandb").glob("offline-run-*")
    assert f"W&B grid table: {os.path.relpath(folder)}" in lines
    w = read_offline_run(str(folder))  # waits for W&B's writer to flush the run's exit record
    assert (w["config"]["grid"], w["config"]["runs"]) == ("tiny", 3)
    (row,) = [h for h in w["history"] if "grid/path" in h]
    table = json.loads((folder / "files" / row["grid/path"]).read_text())
    assert table["columns"] == list(GRID_COLUMNS)
    got = {(d[1], d[3]): d for d in table["data"]}  # (setup, epoch) -> row
    assert len(got) == len(table["data"]) == 4  # two setups x epochs 0 and 1
    for run in ("heal-Fisher-1e-06-none", "heal-Fisher-1e-06-RawL2"):
        record = json.loads((out / run / "results.json").read_text())
        for epoch in (0, 1):
            cells = dict(zip(GRID_COLUMNS, got[(record["heal/setup"], epoch)]))
            assert cells["method"] == "fisher" and cells["seed"] == record["unlearn/seed"]
            assert cells["test_acc"] == pytest.approx(record[f"healed/test/acc_epoch_{epoch}"])
            assert cells["val_acc"] == pytest.approx(record[f"healed/val/acc_epoch_{epoch}"])
            assert cells["baseline_acc"] == pytest.approx(record["baseline/test/acc"])
    # a second run of the grid finds everything finished and only reports; the report reads the runs back
    assert main(["grid", path]) == 0
    assert "[1/" not in capsys.readouterr().out
    assert main(["report", str(out), "--output", str(in_tmp / "r.json")]) == 0
    rows = json.loads((in_tmp / "r.json").read_text())["healing"]
    assert rows[0]["method"] == "fisher" and set(rows[0]["setups"]) == {"R", "T-raw_l2"}


def test_the_runner_starts_the_wandb_service_its_forked_runs_share(tmp_path, configs_dir, monkeypatch):
    # the W&B service is started once in the runner, before the first fork, only when a run logs to W&B (and
    # W&B is not disabled)
    import wandb

    from healing_pl.experiments.grid import LocalLauncher, _check_all
    from healing_pl.experiments.spec import build_runs

    started = []
    monkeypatch.setattr(wandb, "setup", lambda *args, **kwargs: started.append(True))
    spec = _tiny(configs_dir)
    assert _check_all(build_runs(spec, str(tmp_path / "a"), "tiny")) is False
    spec["heal"]["wandb.enabled"] = True
    assert _check_all(build_runs(spec, str(tmp_path / "b"), "tiny")) is True
    for mode, logs, expected in (("offline", False, []), ("disabled", True, []), ("offline", True, [True])):
        monkeypatch.setenv("WANDB_MODE", mode)
        started.clear()
        LocalLauncher().prepare(logs)
        assert started == expected, (mode, logs)
