"""configs/paper/: the paper's constants, one grid per table, each a valid grid spec of the paper's CNN."""

from __future__ import annotations

import pathlib

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))


def _cells(spec):
    """Every run's settings: the command's shared overrides with one entry of every axis."""
    cells = [dict(spec.get(spec.get("command", "heal"), {}))]
    for entries in spec.get("axes", {}).values():
        cells = [{**c, **e} for c in cells for e in entries]
    return cells


def test_one_file_per_table():
    assert [p.name.split("_")[0] for p in PAPER] == [f"table{i}" for i in range(1, 7)]


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_constants_and_nothing_calibrated(path):
    spec = yaml.safe_load(path.read_text())
    assert (ROOT / spec["config"]).is_file()
    assert spec["fit"]["model.backbone"] == "paper_cnn" and len(spec["seeds"]) >= 5
    assert "Table" in path.read_text().splitlines()[0]  # the header names the paper's table
    for cell in _cells(spec):
        method = cell.get("unlearn")
        if method == "Influence":
            assert (cell["unlearn.step"], cell["unlearn.max_norm"], cell["unlearn.batch_r"]) == ("fixed", 1.0, 2048)
            assert cell["unlearn.damping_convention"] == "koh_liang"
            table3 = (cell["unlearn.damping"], cell["unlearn.depth"], cell["unlearn.scale"]) == (1e-4, 10, 10.0)
            table6 = (cell["unlearn.damping"], cell["unlearn.depth"], cell["unlearn.scale"]) == (1e-6, 5000, 1000.0)
            assert table3 if path.name.startswith("table3") else table6
        elif method == "Fisher":
            assert (cell["unlearn.alpha"], cell["unlearn.lam"], cell["unlearn.shaping"]) == (3.5e-3, 1e-6, "paper")
            # Table 2: the Newton step plus noise per deletion batch; Tables 4-6: noise only (the measured recipe)
            newton = path.name.startswith("table2")
            assert cell["unlearn.noise_only"] is (not newton) and cell["unlearn.per_batch"] is True
        elif method == "SISA":
            assert cell["unlearn.protocol"] == "paper"
        else:
            raise AssertionError(f"{path.name}: a run without a method: {cell}")
        budget = cell["adversary.budget"]
        if "unlearn.batch_f" in cell and budget < 1:  # the paper's deletion batch: 1024 up to 10%, 2048 above
            assert cell["unlearn.batch_f"] == (1024 if budget <= 0.1 else 2048)


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_every_paper_command_passes_the_cli_parser(path, monkeypatch, capsys):
    """Each file is a valid grid spec whose every command the CLI's parser accepts (about 30 s a file)."""
    from healing_pl.main import main

    monkeypatch.chdir(ROOT)
    assert main(["grid", str(path.relative_to(ROOT)), "--out", "runs-dry", "--dry_run"]) == 0
    assert "commands checked with the CLI's parser" in capsys.readouterr().out
    assert not (ROOT / "runs-dry").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "paper" / "cpu").glob("*.yaml")), ids=lambda p: p.name)
def test_the_cpu_cuts_are_grid_specs_of_the_paper_recipes(path, monkeypatch):
    """configs/paper/cpu/: each a grid spec that builds its runs, with the authors' recipe for its method."""
    from healing_pl.experiments.spec import build_runs, grid_name, load_spec

    monkeypatch.chdir(ROOT)
    spec = load_spec(str(path.relative_to(ROOT)))
    runs = build_runs(spec, "runs/x", grid_name(spec, str(path)))
    assert runs and all(r.seed is not None for r in runs)
    for cell in _cells(spec):
        if cell.get("unlearn") == "SISA":
            assert cell["unlearn.protocol"] == "paper"
        if cell.get("unlearn") == "Fisher":
            assert (cell["unlearn.alpha"], cell["unlearn.shaping"]) == (3.5e-3, "paper")
