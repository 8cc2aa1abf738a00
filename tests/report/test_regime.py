"""The twin regime: heal experiments that differ only in the forget set's size and the heal set, each twin setup
paired per seed with R and with the controls, against scipy's paired t; the figure and the report sections."""

import pytest
from scipy import stats as sps

from healing_pl.main import main
from healing_pl.report.markdown import report
from healing_pl.report.regime import regime_figure, regime_markdown, regime_series, verdict
from healing_pl.report.tables import Stat
from tests.report.conftest import config

SEEDS = (0, 1, 2)
#: per (budget, remain_fraction): feat_cosine minus R in each seed (fractions)
EFFECT = {(10, 1.0): [0.01, -0.01, 0.0], (25, 1.0): [0.0, 0.005, -0.005], (10, 0.1): [0.0, 0.0, 0.0]}
EFFECT[(25, 0.1)] = [0.02, 0.025, 0.03]


def _records(make_record):
    out = []
    for (budget, fraction), effect in EFFECT.items():
        cfg = config(adversary__budget=budget, heal__remain_fraction=fraction, twins__same_class=False)
        for seed in SEEDS:
            r_acc = 0.80 + seed / 100
            for metric, acc, same in [
                ("none", r_acc, False),
                ("feat_cosine", r_acc + effect[seed], False),
                ("random", r_acc + 0.001 * seed, False),
                ("random", r_acc + 0.004, True),
            ]:
                run = f"runs/g/heal-{budget}-{fraction}-{metric}-{same}-{seed}"
                out.append(make_record(metric, [acc - 0.05, acc], seed=seed, cfg=cfg, run=run, same_class=same))
    return out


def test_each_cell_pairs_the_twins_with_r_and_both_controls_like_scipy(make_record):
    (series,) = regime_series(_records(make_record))
    cells = series["cells"]
    # R + T first, then T + 10% of R; each by forget-set size
    assert [(c["remain_fraction"], c["forget"].mean) for c in cells] == [(1.0, 10), (1.0, 25), (0.1, 10), (0.1, 25)]
    assert all(c["seeds"] == 3 for c in cells)
    strong = cells[-1]["setups"]["T-feat_cosine"]
    assert set(strong) == {"R", "T-random", "T-random [same class]"}
    minus_r = strong["R"]["overall"]
    assert minus_r.values == pytest.approx(EFFECT[(25, 0.1)])
    ci = sps.ttest_rel([0.8 + s / 100 + e for s, e in zip(SEEDS, EFFECT[(25, 0.1)])], [0.8 + s / 100 for s in SEEDS])
    low, high = ci.confidence_interval(0.95)
    assert minus_r.interval() == pytest.approx((low, high))
    assert verdict(minus_r) == "better"
    assert strong["T-random [same class]"]["overall"].values == pytest.approx([e - 0.004 for e in EFFECT[(25, 0.1)]])
    # no per-image results here: the attacked class has no values, and says so
    assert strong["R"]["class"].values == [] and verdict(strong["R"]["class"]) == "—"
    # a control is paired with the other control and R, never with itself
    assert set(cells[0]["setups"]["T-random"]) == {"R", "T-random [same class]"}
    noisy = cells[0]["setups"]["T-feat_cosine"]["R"]["overall"]
    assert (
        verdict(noisy).startswith("within noise (MDE ")
        and verdict(cells[2]["setups"]["T-feat_cosine"]["R"]["overall"]) == "equal in every seed"
    )


def test_forget_set_sizes_without_r_or_a_control_are_no_regime(make_record, tmp_path):
    # twin setups alone have nothing to be paired with: no regime section, and the dashboard still builds
    from healing_pl.report.dashboard import dashboard_html

    records = [r for r in _records(make_record) if r["twins/metric"] == "feat_cosine"]
    assert len(records) == 12 and regime_series(records) == []
    assert "twin regime" not in dashboard_html(records, str(tmp_path)).lower()


def test_verdict_words():
    assert verdict(Stat([-0.03, -0.02, -0.025], bounds=(-1, 1))) == "worse"
    assert verdict(Stat([0.01], bounds=(-1, 1))) == "—"  # one seed: no interval


def test_the_report_has_the_regime_table_and_the_figure_its_numbers(make_record, tmp_path, capsys):
    records = _records(make_record)
    text = report(records)
    assert "## The twin regime (paired effects against the forget-set size)" in text
    table = regime_markdown(regime_series(records))
    row = next(x for x in table.splitlines() if x.startswith("| T + 10% of R | 25 | 3 | T-feat_cosine |"))
    assert row.endswith("| better / — |") and "+2.50 [" in row
    (series,) = regime_series(records)
    fig = regime_figure(series)
    plotted = {bars.get_label(): list(bars.lines[0].get_ydata()) for bars in fig.axes[0].containers}
    assert plotted["T-feat_cosine, T + 10% of R"] == pytest.approx([0.0, 2.5])
    assert plotted["T-feat_cosine, R + T"] == pytest.approx([0.0, 0.0], abs=1e-9)


def test_the_regime_figure_is_written_by_report_figures(make_record, tmp_path, capsys):
    import json

    folder = tmp_path / "runs"
    for r in _records(make_record):
        run = folder / r["run_dir"].replace("/", "_")
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(r))
    assert main(["report", str(folder), "--figures", str(tmp_path / "figs")]) == 0
    assert "figure written to" in capsys.readouterr().out and (tmp_path / "figs" / "regime-0.png").is_file()


def test_the_attacked_class_is_paired_from_the_per_image_results(make_record, tmp_path):
    import json

    import yaml

    from healing_pl import records as rk
    from healing_pl.phases.evaluate import Evaluation, save_correctness
    from healing_pl.report.cli import load_records
    from healing_pl.report.images import ImageSource
    from tests.report.conftest import CONFIG

    folder, labels = tmp_path / "runs", None
    for r in _records(make_record):
        run = folder / r["run_dir"].replace("/", "_")
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(r))
        (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
        (run / "splits.json").write_text(json.dumps({"splits": {"test": list(range(60))}}))
        labels = labels or ImageSource().test_labels(str(run))
        twins = r[rk.HEAL_SETUP] == "T-feat_cosine"  # right on every class-3 image; the others on every third
        healed = [y != 3 or twins or i % 3 == 0 for i, y in enumerate(labels)]
        bits = {rk.BASELINE: [True] * 60, rk.GOLD: [True] * 60, rk.UNLEARNED: [y != 3 for y in labels]}
        bits[rk.HEALED] = healed
        save_correctness(str(run), [Evaluation(m, 0.9, 0.9, 0.0, bytes(int(c) for c in b)) for m, b in bits.items()])
    threes = [i for i, y in enumerate(labels) if y == 3]
    gap = 1 - sum(i % 3 == 0 for i in threes) / len(threes)
    assert 0 < gap < 1
    (series,) = regime_series(load_records([str(folder)]))
    for cell in series["cells"]:
        assert cell["target"] == 3
        feat = cell["setups"]["T-feat_cosine"]
        assert feat["R"]["class"].values == pytest.approx([gap] * 3)
        assert feat["T-random [same class]"]["class"].values == pytest.approx([gap] * 3)
        assert cell["setups"]["T-random"]["R"]["class"].values == pytest.approx([0.0] * 3)
