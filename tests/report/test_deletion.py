"""The paper's Figures 1-2: accuracy and unlearning time against the deletion fraction, from unlearn records."""

import json

import numpy as np
from scipy import stats

from healing_pl.adversary import SELECTORS
from healing_pl.report.cli import report_main
from healing_pl.report.deletion import deletion_figure, deletion_markdown, deletion_series
from healing_pl.report.markdown import report
from tests.report.conftest import PRIMARY, chosen, config, method, unlearn_record

SISA = method("sisa", shards=3, slices=5)
#: per budget: the unlearned and GS accuracies of seeds 0-2, and the unlearning time
GRID = {0.05: ([0.95, 0.94, 0.96], [0.96, 0.96, 0.97], 20.0), 0.3: ([0.90, 0.88, 0.91], [0.95, 0.94, 0.95], 60.0)}


def _records(method_section=SISA, grid=GRID):
    out = []
    for budget, (accs, golds, time_s) in grid.items():
        cfg = config(adversary=chosen(SELECTORS, "random", budget=budget, seed=0), unlearn=method_section)
        for seed, (acc, gs) in enumerate(zip(accs, golds)):
            out.append(
                unlearn_record(
                    seed,
                    acc,
                    cfg=cfg,
                    gs=gs,
                    time_s=time_s + seed,
                    count=round(budget * PRIMARY),
                    gold_time_s=100.0,
                    run=f"runs/t1/seed-{seed}/unlearn-{budget}-{method_section['class_path']}",
                )
            )
    return out


def test_one_series_per_method_with_a_point_per_fraction():
    series = deletion_series(_records())
    assert len(series) == 1 and series[0]["method"] == "sisa"
    points = series[0]["points"]
    assert [p["budget"] for p in points] == [0.05, 0.3]
    assert [p["fraction"] for p in points] == [round(0.05 * PRIMARY) / PRIMARY, round(0.3 * PRIMARY) / PRIMARY]
    accs, golds, _ = GRID[0.3]
    diff = points[1]["unlearned - GS"]
    expected = stats.ttest_rel(accs, golds).confidence_interval(0.95)
    assert np.allclose(diff.values, np.subtract(accs, golds))
    assert np.allclose(diff.interval(), (expected.low, expected.high))
    assert points[1]["unlearn time"].values == [60.0, 61.0, 62.0] and points[1]["GS time"].mean == 100.0


def test_two_methods_are_two_series_and_one_fraction_is_none():
    naive = _records(method("naive"))
    assert [s["method"] for s in deletion_series(_records() + naive)] == ["naive", "sisa"]
    one = {0.05: GRID[0.05]}
    assert deletion_series(_records(grid=one)) == []
    assert "Figures 1–2" not in report(_records(grid=one))


def test_the_table_and_the_report_section():
    text = deletion_markdown(deletion_series(_records()))
    row = next(line for line in text.splitlines() if line.startswith("| 30.0%"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3" and cells[3].startswith("89.67 [") and cells[5].startswith("-5.00 [")
    assert cells[6].startswith("61.0") and cells[7].startswith("100.0")
    assert "## Against the deletion fraction (the paper's Figures 1–2)" in report(_records())


def test_the_figure_draws_every_run_and_the_means():
    fig = deletion_figure(deletion_series(_records())[0])
    acc_ax, time_ax = fig.axes
    mean_line = acc_ax.lines[0]  # the method's means over seeds
    assert np.allclose(mean_line.get_ydata(), [100 * np.mean(GRID[b][0]) for b in GRID])
    dots = np.concatenate([line.get_ydata() for line in acc_ax.lines[1:3]])
    assert np.allclose(sorted(dots), sorted(100 * np.array(GRID[0.05][0] + GRID[0.3][0])))
    assert np.allclose(time_ax.lines[0].get_ydata(), [21.0, 61.0])


def test_report_writes_the_figures_as_png(tmp_path, capsys):
    for k, record in enumerate(_records()):
        folder = tmp_path / "runs" / f"r{k}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(record))
    assert report_main([str(tmp_path / "runs"), "--figures", str(tmp_path / "fig")]) == 0
    png = tmp_path / "fig" / "deletion-0.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "figure written to" in capsys.readouterr().out
    one = tmp_path / "one"  # a single deletion fraction: no series, and the report says so
    (one / "r").mkdir(parents=True)
    (one / "r" / "results.json").write_text(json.dumps(_records(grid={0.05: GRID[0.05]})[0]))
    assert report_main([str(one), "--figures", str(tmp_path / "none")]) == 0
    assert "no figures written" in capsys.readouterr().out and not (tmp_path / "none").exists()
