"""The report's statistics against scipy and exact answers, and the tables' promise: every interval inside its
range, bimodal seeds shown per seed, one seed said as "n = 1", McNemar from the runs' per-image results."""

import io
import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats as sp

from healing_pl import records as rk
from healing_pl.phases.evaluate import (
    CORRECTNESS_FILE,
    Evaluation,
    load_correctness,
    per_image_correctness,
    save_correctness,
)
from healing_pl.phases.gold import Gold
from healing_pl.report import stats
from healing_pl.report.markdown import report
from healing_pl.report.tables import healing_rows, load_records

# a worked example: test accuracy of two setups over 6 seeds (same seed, same start, same test images)
TWINS = [0.9712, 0.9655, 0.9731, 0.9688, 0.9702, 0.9669]
R = [0.9695, 0.9651, 0.9702, 0.9680, 0.9671, 0.9658]


def test_paired_interval_and_p_equal_scipys_paired_t():
    result = stats.paired(TWINS, R, bounds=None)
    scipy_t = sp.ttest_rel(TWINS, R)
    ci = scipy_t.confidence_interval(0.95)
    assert result.interval.low == pytest.approx(ci.low) and result.interval.high == pytest.approx(ci.high)
    assert result.p == pytest.approx(scipy_t.pvalue) and result.interval.kind == "t"
    # a one-sample t on the differences is the same test
    d = [a - b for a, b in zip(TWINS, R)]
    assert result.mean == pytest.approx(np.mean(d)) and result.p == pytest.approx(sp.ttest_1samp(d, 0).pvalue)
    # by hand: mean 0.0013333, sd 0.0011377, t(0.975, 5) = 2.5706 -> half-width 0.0011940
    # by hand: differences 17, 4, 29, 8, 31, 11 (1e-4): mean 1.6667e-3, sd 1.1183e-3, t(0.975, 5) = 2.5706
    assert result.mean == pytest.approx(1.6667e-3, rel=1e-4)
    half = 2.5706 * 1.1183e-3 / math.sqrt(6)
    assert (result.interval.low, result.interval.high) == pytest.approx((1.6667e-3 - half, 1.6667e-3 + half), rel=1e-3)
    assert result.within_noise is False and result.p == pytest.approx(0.01474, rel=1e-3)


def test_mcnemar_equals_binomial_test_on_discordant_counts():
    # 7 images only the first model gets right, 2 only the second, 91 both or neither
    first = [True] * 7 + [False] * 2 + [True] * 50 + [False] * 41
    second = [False] * 7 + [True] * 2 + [True] * 50 + [False] * 41
    test = stats.mcnemar(first, second)
    assert (test.b, test.c) == (7, 2)
    assert test.p == pytest.approx(sp.binomtest(7, 9, 0.5).pvalue)
    assert test.p == pytest.approx(2 * (1 + 9 + 36) / 2**9)  # exact: 2 P(X <= 2), X ~ Binomial(9, 1/2)
    assert stats.mcnemar_exact(0, 0).p == 1.0 and stats.mcnemar_exact(3, 3).p == 1.0
    with pytest.raises(ValueError, match="different test sets"):
        stats.mcnemar([True], [True, False])


def test_minimum_detectable_difference_against_a_direct_computation():
    n, sd = 10, 0.005
    direct = (sp.t.ppf(0.975, n - 1) + sp.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert stats.mde(n, sd) == pytest.approx(direct)
    # at that difference the paired t test has about 80% power (noncentral t)
    crit = sp.t.ppf(0.975, n - 1)
    nc = direct / (sd / math.sqrt(n))
    power = sp.nct.sf(crit, n - 1, nc) + sp.nct.cdf(-crit, n - 1, nc)
    assert 0.78 < power < 0.82
    assert stats.mde(1, None) is None
    assert stats.paired(TWINS, R).mde == pytest.approx(stats.mde(6, np.std(np.subtract(TWINS, R), ddof=1)))


def test_bounded_intervals_never_leave_their_range():
    # n = 6 near 100%: the t interval would pass 1, so a seeded percentile bootstrap from scipy replaces it
    values = [1.0, 1.0, 1.0, 1.0, 1.0, 0.70]
    assert stats.t_interval(values)[1] > 1
    ci = stats.interval(values)
    ref = sp.bootstrap(
        (np.array(values),),
        np.mean,
        n_resamples=stats.RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(stats.BOOTSTRAP_SEED),
    ).confidence_interval
    assert ci.kind == "bootstrap" and (ci.low, ci.high) == pytest.approx((ref.low, ref.high)) and ci.high <= 1
    # n = 2 below the range: the t interval cut at 0
    ci = stats.interval([0.0, 0.5])
    assert stats.t_interval([0.0, 0.5]) == pytest.approx((0.25 - 12.706 * 0.25, 0.25 + 12.706 * 0.25), rel=1e-4)
    assert ci.kind == "t, cut at the range" and (ci.low, ci.high) == (0.0, 1.0)


def _bracketed(text: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in re.findall(r"\[([-+]?\d+\.\d+), ([-+]?\d+\.\d+)\]", text)]


def test_no_printed_interval_leaves_its_range_over_random_inputs():
    rng = np.random.default_rng(0)
    for case in range(300):
        n = [2, 2, 3, 5, 10][case % 5]
        kind = case % 3
        if kind == 0:  # near the edges
            values = np.clip(rng.choice([0.0, 1.0]) + rng.normal(0, 0.3, n) * rng.choice([-1, 1]), 0, 1)
        elif kind == 1:  # bimodal: collapsed (near chance) and intact seeds
            values = np.where(rng.random(n) < 0.5, rng.uniform(0.05, 0.15, n), rng.uniform(0.9, 1.0, n))
        else:
            values = rng.uniform(0, 1, n)
        threshold = 0.2 if case % 2 else None
        s = stats.summary(values, stats.UNIT, threshold)
        if s.interval is not None:
            assert 0.0 <= s.interval.low <= s.mean <= s.interval.high <= 1.0
        text = s.text()
        assert "±" not in text
        assert all(0.0 <= lo <= hi <= 100.0 for lo, hi in _bracketed(text)), text
        auc = s.text(scale=1.0, digits=3)
        assert all(0.0 <= lo <= hi <= 1.0 for lo, hi in _bracketed(auc)), auc
        if s.mixed:
            assert text.startswith("per seed ") and f"of {n} collapsed)" in text
        other = np.clip(values + rng.normal(0, 0.3, n), 0, 1)
        d = stats.paired(values, other)
        if d.interval is not None:
            assert -1.0 <= d.interval.low <= d.interval.high <= 1.0


def test_bimodal_seeds_are_shown_per_seed_with_a_collapse_count():
    s = stats.summary([0.09, 0.95, 0.96], threshold=stats.collapse_threshold(10))
    assert s.mixed and s.interval is None and s.collapsed == 1
    assert s.text() == "per seed 9.00, 95.00, 96.00 (1 of 3 collapsed)"
    assert not stats.summary([0.09, 0.10], threshold=0.2).mixed  # all collapsed: one mode, a mean
    assert stats.summary([0.5]).text() == "50.00 (n = 1: no uncertainty)"


def _runs(make_record, seeds, accs):
    """Heal runs: per seed R, T-raw_l2 and T-random, ``accs[setup][seed]`` the test accuracy after both epochs."""
    out = []
    for s in range(seeds):
        for metric, label in (("none", "R"), ("raw_l2", "T-raw_l2"), ("random", "T-random")):
            a = accs[label][s]
            out.append(make_record(metric, [a, a], seed=s, init=accs["Init"][s]))
    return out


def test_a_two_seed_table_prints_no_interval_wider_than_the_range(make_record):
    # the "Init 83.83 ± 125.17": two seeds far apart, one collapsed
    accs = {"Init": [0.68, 0.996], "R": [0.70, 0.99], "T-raw_l2": [0.75, 0.995], "T-random": [0.72, 0.99]}
    text = report(_runs(make_record, 2, accs), "runs", stderr=io.StringIO())
    assert "±" not in text and "n = 2 seeds: t intervals are wide (t = 12.71)" in text
    found = _bracketed(text)
    assert found and all(-100.0 <= lo <= hi <= 100.0 for lo, hi in found)  # differences live in [-100, 100]
    healing = text.split("## Methods")[0]
    table = [line for line in healing.splitlines() if line.startswith("| digits")][0]
    cells = [c.strip() for c in table.strip("|").split("|")]
    accuracies = cells[4:11] + cells[13:]  # BL, GS, Init, best and worst, T-random (not the Best−GS differences)
    assert all(0.0 <= lo <= hi <= 100.0 for cell in accuracies for lo, hi in _bracketed(cell))
    assert "| 83.80 [0.00, 100.00] |" in table  # Init: t would give 83.80 ± 202.0: cut at the range
    # bimodal: one seed collapsed -> per seed values and a count instead of a mean
    accs["Init"] = [0.05, 0.99]
    row_text = report(_runs(make_record, 2, accs), "runs", stderr=io.StringIO())
    assert "| per seed 5.00, 99.00 (1 of 2 collapsed) |" in row_text
    accs["R"] = [0.10, 0.99]  # R collapsed on seed 0: its differences are shown per seed, with no MDE
    row_text = report(_runs(make_record, 2, accs), "runs", stderr=io.StringIO())
    line = [x for x in row_text.splitlines() if x.startswith("| T-raw_l2 | ")][-1]
    assert line.startswith("| T-raw_l2 | per seed +65.00, +0.50 (1 of 2 collapsed) | per seed +65.00, +0.50 (1 of 2")
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[-3] == "—" and cells[-1] == "—"  # no MDE against R, no per-image results
    assert cells[-2] != "—"  # against T-random neither side collapsed: its MDE stands


def test_one_seed_says_n_1(make_record):
    accs = {"Init": [0.5], "R": [0.90], "T-raw_l2": [0.91], "T-random": [0.89]}
    text = report(_runs(make_record, 1, accs), "runs", stderr=io.StringIO())
    assert "n = 1: no uncertainty" in text and "±" not in text
    paired_section = text.split("Paired differences")[1].split("## Methods")[0]
    assert not any("[" in line for line in paired_section.splitlines() if line.startswith(("| R ", "| T-")))
    paired = [line for line in text.splitlines() if line.startswith("| T-raw_l2 | ")][-1]
    assert paired.startswith("| T-raw_l2 | +1.00 | +1.00 | +2.00 | +0.00 | — |")


def test_paired_table_matches_scipy_and_marks_only_intervals_holding_zero(make_record):
    accs = {"Init": [0.5] * 6, "R": R, "T-raw_l2": TWINS, "T-random": [a - 0.02 for a in R]}
    row = healing_rows(_runs(make_record, 6, accs))[0]
    diff = row["paired"]["T-raw_l2"]["R"]["N/2"]
    ci = sp.ttest_rel(TWINS, R).confidence_interval()
    assert diff.interval() == pytest.approx((ci.low, ci.high)) and diff.within_noise is False
    text = report(_runs(make_record, 6, accs), "runs", stderr=io.StringIO())
    line = [x for x in text.splitlines() if x.startswith("| T-raw_l2 | ")][-1]
    cell = f"{100 * diff.mean:+.2f} [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}]"
    assert f"| {cell} |" in line and f"| {100 * diff.mde:.2f} |" in line
    # the MDE against the control: from the spread of T-raw_l2 − T-random, as stats.mde has it
    control = stats.mde(6, np.std(np.subtract(TWINS, accs["T-random"]), ddof=1))
    header = [x for x in text.splitlines() if x.startswith("| setup | − R 1 ep")][-1]
    at = [c.strip() for c in header.strip("|").split("|")].index("MDE − T-random N/2 ep")
    assert [c.strip() for c in line.strip("|").split("|")][at] == f"{100 * control:.2f}"
    assert "n = 6 seeds" in text and "wide" not in text.split("Paired differences")[1]


def test_evaluation_saves_per_image_correctness_and_mcnemar_reads_it(tmp_path, make_record):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(37, 4), torch.randint(0, 3, (37,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    correct = per_image_correctness(model, loader)
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).tolist()
    assert [bool(b) for b in correct] == expected and len(correct) == 37
    # one seed: R and T-raw_l2 runs, each saving the healed model's and the gold standard's bits
    rng = np.random.default_rng(1)
    gold = bytes(int(b) for b in rng.random(200) < 0.9)
    healed = {
        "R": bytes(int(b) for b in rng.random(200) < 0.8),
        "T-raw_l2": bytes(int(b) for b in rng.random(200) < 0.9),
    }
    for metric, label in (("none", "R"), ("raw_l2", "T-raw_l2")):
        acc = sum(healed[label]) / 200
        record = make_record(metric, [acc, acc], gs=sum(gold) / 200)
        folder = tmp_path / "runs" / label
        # as the run's phases hold them: the gold standard's evaluation inside its Gold result
        evals = [
            Gold(Evaluation(rk.GOLD, 0.9, 0.9, 0, gold), 30.0, False),
            Evaluation(rk.HEALED, acc, acc, 0, healed[label]),
        ]
        assert save_correctness(str(folder), evals) == str(folder / CORRECTNESS_FILE)
        (folder / "results.json").write_text(json.dumps(record))
    saved = load_correctness(str(tmp_path / "runs" / "R"))
    assert saved == {rk.GOLD: [bool(b) for b in gold], rk.HEALED: [bool(b) for b in healed["R"]]}
    gs_test = healing_rows(load_records([str(tmp_path / "runs")]))[0]["mcnemar"]["R"]["GS"][0]
    assert (gs_test.b, gs_test.c) == (
        sum(1 for p, q in zip(healed["R"], gold) if p and not q),
        sum(1 for p, q in zip(healed["R"], gold) if q and not p),
    )
    row = healing_rows(load_records([str(tmp_path / "runs")]))[0]
    test = row["mcnemar"]["T-raw_l2"]["R"][0]
    b = sum(1 for p, q in zip(healed["T-raw_l2"], healed["R"]) if p and not q)
    c = sum(1 for p, q in zip(healed["T-raw_l2"], healed["R"]) if q and not p)
    assert (test.b, test.c) == (b, c) and test.p == pytest.approx(sp.binomtest(b, b + c, 0.5).pvalue)
    text = report(load_records([str(tmp_path / "runs")]), "runs", stderr=io.StringIO())
    assert f"| {b} / {c}, p = {test.p:.3g} |" in text
    assert load_correctness(str(tmp_path)) == {}  # no file: no per-image results


def test_no_interval_of_a_random_report_leaves_its_range(make_record):
    rng = np.random.default_rng(3)
    checked = 0
    for case in range(12):
        n = [1, 2, 2, 3][case % 4]
        edge = rng.choice([0.02, 0.98])  # seeds near 0% or 100%, some collapsed, some intact
        accs = {
            label: list(np.clip(rng.choice([edge, rng.uniform(0.05, 1.0)]) + rng.normal(0, 0.2, n), 0, 1))
            for label in ("Init", "R", "T-raw_l2", "T-random")
        }
        text = report(_runs(make_record, n, accs), "runs", stderr=io.StringIO())
        assert "±" not in text and (n > 1 or "n = 1: no uncertainty" in text)
        healing, paired = text.split("## Methods")[0].split("Paired differences")
        for line in healing.splitlines():
            if line.startswith("| digits"):
                cells = [c.strip() for c in line.strip("|").split("|")]
                for cell in cells[4:11] + cells[13:]:  # accuracies: in [0, 100]
                    assert all(0 <= lo <= hi <= 100 for lo, hi in _bracketed(cell)), cell
            elif line.startswith(("| R |", "| T-")):  # every heal setup's accuracy
                assert all(0 <= lo <= hi <= 100 for lo, hi in _bracketed(line)), line
        for line in paired.splitlines():  # differences: in [-100, 100]
            assert all(-100 <= lo <= hi <= 100 for lo, hi in _bracketed(line)), line
        checked += len(_bracketed(text))
    assert checked > 100  # the seeds of n >= 2 printed intervals, and each was checked
