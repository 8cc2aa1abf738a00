"""Reports that never mix experiments: grouping, best/worst without controls, ties, seeds with 95% CIs."""

import io
import json

import pytest
from scipy import stats

from healing_pl import records as rk
from healing_pl.main import main
from healing_pl.report.markdown import report
from healing_pl.report.tables import Stat, healing_rows, healing_tables
from tests.report.conftest import config, method


def _report(records):
    err = io.StringIO()
    return report(records, "runs", stderr=err), err.getvalue()


def test_two_experiments_give_two_tables_and_one_warning(make_record):
    a = [make_record(m, [0.90, 0.92]) for m in ("none", "raw_l2")]
    b = [make_record(m, [0.80, 0.85], sha="b" * 64, cfg=config(heal__epochs=3)) for m in ("none", "raw_l2")]
    text, err = _report(a + b)
    assert err.splitlines() == [
        "healing-pl report: warning: runs holds 2 experiments that differ in baseline.sha256, heal.epochs; "
        "reported separately."
    ]
    assert text.count("### experiment ") == 2 and "heal.epochs=2" in text and "heal.epochs=3" in text
    found = healing_tables(a + b)
    assert [len(t["rows"]) for t in found] == [1, 1]
    assert sorted(t["rows"][0]["BL"].values[0] for t in found) == [0.94, 0.94]
    # one experiment alone: no warning
    assert _report(a)[1] == ""


def test_methods_share_a_table_but_one_method_with_two_alphas_does_not(make_record):
    fisher = [make_record(m, [0.9, 0.9]) for m in ("none", "raw_l2")]
    influence = [make_record(m, [0.8, 0.8], cfg=config(unlearn=method("influence"))) for m in ("none", "raw_l2")]
    found = healing_tables(fisher + influence)
    assert len(found) == 1 and [r["method"] for r in found[0]["rows"]] == ["fisher", "influence"]
    other_alpha = [make_record(m, [0.7, 0.7], cfg=config(unlearn__alpha=8e-6)) for m in ("none", "raw_l2")]
    text, err = _report(fisher + other_alpha)
    assert "differ in unlearn.alpha;" in err and len(healing_tables(fisher + other_alpha)) == 2


def test_one_seed_two_baselines_are_two_experiments(make_record):
    runs = [make_record("none", [0.9, 0.9]), make_record("none", [0.8, 0.8], sha="c" * 64)]
    assert len(runs[0][rk.EXPERIMENT_ID]) == 12 and runs[0][rk.EXPERIMENT_ID] == runs[1][rk.EXPERIMENT_ID]
    rows = healing_rows(runs)
    assert len(rows) == 2 and {r["experiment"].split("/")[1] for r in rows} == {"a" * 8, "c" * 8}
    # another seed with another baseline is a repeat of the same experiment
    seeds = [make_record("none", [0.9, 0.9]), make_record("none", [0.8, 0.8], sha="c" * 64, seed=1)]
    assert [r["seeds"] for r in healing_rows(seeds)] == [2]


def test_best_and_worst_never_come_from_random(make_record):
    runs = [
        make_record("none", [0.80, 0.85]),
        make_record("raw_l2", [0.82, 0.86]),
        make_record("feat_cosine", [0.70, 0.75]),
        make_record("random", [0.99, 0.99]),
    ]
    row = healing_rows(runs)[0]
    assert row["best 1"] == ["T-raw_l2"] and row["worst 1"] == ["T-feat_cosine"]
    assert row["best N/2"] == ["T-raw_l2"] and row["worst N/2"] == ["T-feat_cosine"]
    text, _ = _report(runs)
    head, line = [x for x in text.splitlines() if x.startswith("| dataset (model)") or x.startswith("| digits")]
    assert head.endswith("| T-random 1 ep | T-random N/2 ep |") and line.endswith("| 99.00 | 99.00 |")
    assert "| 86.00 (T-raw_l2) | 75.00 (T-feat_cosine) |" in line
    assert "| -5.00 | " in line  # Best−GS after N/2: 86 - 91


def test_same_class_random_spares_are_a_control_of_the_same_experiment(make_record):
    """twins.same_class changes the experiment identity a run records, but it is a heal setup compared with R on the
    same start (the twin-regime study's second control): one experiment, its own column, paired like T-random."""
    runs = [
        make_record(metric, [0.80 + d, 0.85 + d], seed=seed, same_class=same, bl=0.94 + seed / 100)
        for seed in (0, 1)
        for metric, d, same in [("none", 0.0, False), ("feat_cosine", 0.02, False), ("random", 0.01, False)]
        + [("random", 0.04, True)]
    ]
    assert len({r[rk.EXPERIMENT_ID] for r in runs}) == 2  # as recorded: two identities
    (row,) = healing_rows(runs)
    assert set(row["setups"]) == {"R", "T-feat_cosine", "T-random", "T-random [same class]"}
    assert row["best N/2"] == ["T-feat_cosine"]  # a control is never the best, though it scores highest
    text, _ = _report(runs)
    assert "| T-random [same class] 1 ep | T-random [same class] N/2 ep |" in text
    assert "| − T-random N/2 ep | − T-random [same class] N/2 ep |" in text
    # paired per seed: 4 points over R, 3 over T-random, 2 under GS (0.89 against 0.91) in both seeds
    assert "| T-random [same class] | +4.00 [+4.00, +4.00] | +4.00 [+4.00, +4.00] | +3.00 [+3.00, +3.00] | — |" in text


def test_best_is_chosen_on_validation_and_reported_with_test(make_record):
    runs = [make_record("none", [0.80, 0.90], val=[0.80, 0.80]), make_record("raw_l2", [0.85, 0.70], val=[0.85, 0.95])]
    row = healing_rows(runs)[0]
    assert row["best N/2"] == ["T-raw_l2"] and row["worst N/2"] == ["R"]
    assert "| 70.00 (T-raw_l2) | 90.00 (R) |" in _report(runs)[0]  # the best by validation has the lower test


def test_a_tie_names_every_tied_setup(make_record):
    runs = [
        make_record("raw_l2", [0.80, 0.90], val=[0.8, 0.9]),
        make_record("none", [0.82, 0.88], val=[0.8, 0.9]),
        make_record("feat_cosine", [0.70, 0.70]),
    ]
    row = healing_rows(runs)[0]
    assert row["best N/2"] == ["R", "T-raw_l2"] and row["best 1"] == ["R", "T-raw_l2"]
    assert "| 88.00 (R) = 90.00 (T-raw_l2) |" in _report(runs)[0]  # each test figure beside its own setup


def test_without_validation_keys_the_best_is_chosen_on_test_and_says_so(make_record):
    runs = [make_record("none", [0.8, 0.9]), make_record("raw_l2", [0.8, 0.7])]
    for r in runs:
        for k in [k for k in r if (epoch := rk.HEALED_EPOCH.match(k)) and epoch["split"] == "val"]:
            del r[k]
    assert healing_rows(runs)[0]["best N/2"] == ["R"]
    assert "Note: chosen on test accuracy: some runs record no validation accuracy" in _report(runs)[0]


def test_seeds_give_mean_and_student_t_interval(make_record):
    r_acc, t_acc, gs = [0.90, 0.92, 0.95], [0.80, 0.81, 0.79], [0.91, 0.90, 0.93]
    runs = [make_record("none", [a, a], seed=s, gs=g) for s, (a, g) in enumerate(zip(r_acc, gs))]
    runs += [make_record("raw_l2", [a, a], seed=s, gs=g) for s, (a, g) in enumerate(zip(t_acc, gs))]
    row = healing_rows(runs)[0]
    assert row["seeds"] == 3 and row["best N/2"] == ["R"]
    best = row["setups"]["R"]["N/2"]
    lo, hi = stats.t.interval(0.95, 2, loc=best.mean, scale=stats.sem(r_acc))
    assert best.mean == pytest.approx(sum(r_acc) / 3) and best.half == pytest.approx((hi - lo) / 2)
    gap = row["best-GS N/2"]["R"]
    assert gap.values == pytest.approx([a - g for a, g in zip(r_acc, gs)])
    # R is far above T-raw_l2 (no ≈ on best) but within noise of GS (≈ on Best−GS)
    assert row["best N/2 within noise"] is False and row["best-GS N/2 within noise"] is True
    text, _ = _report(runs)
    cell = f"{100 * best.mean:.2f} [{100 * (best.mean - best.half):.2f}, {100 * (best.mean + best.half):.2f}] (R)"
    assert f"| {cell} |" in text and "| 3 |" in text
    glo, ghi = gap.interval()
    assert f"| ≈ {100 * gap.mean:+.2f} [{100 * glo:+.2f}, {100 * ghi:+.2f}] |" in text
    assert stats.ttest_rel(r_acc, gs).confidence_interval() == pytest.approx((glo, ghi))  # paired by seed
    assert "≈: within noise" in text and "±" not in text


def test_stat_interval_matches_scipy():
    values = [0.1, 0.4, 0.35, 0.2]
    s = Stat(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=s.mean, scale=stats.sem(values))
    assert s.interval() == pytest.approx((lo, hi))
    assert Stat([0.5]).half is None and Stat([0.5]).cell() == "50.00" and Stat([]).cell() == "—"
    assert Stat([0.5, 0.5]).overlaps(Stat([0.5, 0.5])) and not Stat([0.1, 0.11]).overlaps(Stat([0.5, 0.51]))


def test_records_without_identity_are_grouped_by_flat_keys_and_said_so(make_record):
    old = [make_record(m, [0.9, 0.9]) for m in ("none", "raw_l2")]
    for r in old:
        for k in (rk.EXPERIMENT, rk.EXPERIMENT_ID, rk.EXPERIMENT_SEEDS):
            del r[k]
    text, err = _report(old)
    assert "2 heal record(s) carry no experiment identity" in err and "no identity recorded" in text
    assert len(healing_rows(old)) == 1


def test_report_command_writes_json_with_every_statistic(tmp_path, make_record, capsys):
    runs = [make_record(m, [0.9, 0.9 - i / 100], seed=s) for i, m in enumerate(("none", "raw_l2")) for s in (0, 1)]
    for r in runs:
        folder = tmp_path / "runs" / r[rk.RUN_DIR].replace("/", "_")
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(r))
    assert main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "r.json")]) == 0
    out = json.loads((tmp_path / "r.json").read_text())
    row = out["tables"][0]["rows"][0]
    assert row["seeds"] == 2 and row["best N/2"] == ["R"] and row["setups"]["R"]["N/2"]["n"] == 2
    assert out["healing"][0]["experiment"] == runs[0][rk.EXPERIMENT_ID] and len(out["runs"]) == 4
    diff = row["paired"]["T-raw_l2"]["R"]["N/2"]  # per seed 0.89 - 0.90: the same difference twice
    assert diff["values"] == pytest.approx([-0.01, -0.01]) and diff["interval"] == pytest.approx([-0.01, -0.01])
    assert diff["interval_kind"] == "t" and row["mcnemar"]["T-raw_l2"]["R"] == []  # no per-image results saved
